"""``python -m taskvec``: the command line (what ``torchrun -m taskvec ...`` starts on every rank)."""
from taskvec.cli import main

if __name__ == "__main__":
    main()
