"""Tests of the task suite: data integrity, sampling, custom files, registry and tokenizer checks."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from taskvec.errors import ConfigError, EmptyInputError, TaskFileError, TokenizationError
from taskvec.tasks import (
    DATA_DIR, FileCategorizationTask, KnowledgeTask, check_label_words, describe_tasks, filter_for_tokenizer,
    first_token_collisions, first_token_id, get_task, list_tasks, load_task_file, register_task,
)

KNOWLEDGE = ["country_capital", "antonyms", "english_french", "present_past", "lowercase_uppercase"]
CATEGORIZATION = ["simple_string", "digit", "two_d"]
MIN_PAIRS = {"country_capital": 100, "antonyms": 150, "english_french": 100, "present_past": 100,
             "lowercase_uppercase": 100}


# --- data files --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", KNOWLEDGE)
def test_data_file_integrity(name: str) -> None:
    rows = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(rows, list) and len(rows) >= MIN_PAIRS[name]
    for r in rows:
        assert set(r) == {"input", "output"}
        assert isinstance(r["input"], str) and isinstance(r["output"], str)
        assert r["input"].strip() == r["input"] != "" and r["output"].strip() == r["output"] != ""
    inputs = Counter(r["input"] for r in rows)
    assert [x for x, n in inputs.items() if n > 1] == []


def test_data_spot_checks() -> None:
    def table(name: str) -> dict[str, str]:
        return {r["input"]: r["output"] for r in json.loads((DATA_DIR / f"{name}.json").read_text("utf-8"))}

    cc = table("country_capital")
    assert cc["France"] == "Paris" and cc["Japan"] == "Tokyo" and cc["Australia"] == "Canberra"
    assert cc["Canada"] == "Ottawa" and cc["Brazil"] == "Brasilia" and cc["Turkey"] == "Ankara"
    assert table("antonyms")["hot"] == "cold"
    assert table("present_past")["go"] == "went"
    assert table("english_french")["cat"] == "chat"
    lu = table("lowercase_uppercase")
    assert all(v == k.upper() and k == k.lower() for k, v in lu.items())


# --- sampling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", KNOWLEDGE + CATEGORIZATION)
def test_deterministic_given_seed(name: str) -> None:
    task = get_task(name)
    a = task.sample_trials(5, 6, seed=11)
    assert a == get_task(name).sample_trials(5, 6, seed=11)
    assert [t.meta for t in a] == [t.meta for t in task.sample_trials(5, 6, seed=11)]
    assert a != task.sample_trials(5, 6, seed=12)


@pytest.mark.parametrize("name", KNOWLEDGE + CATEGORIZATION)
def test_query_not_in_demos(name: str) -> None:
    for trial in get_task(name).sample_trials(40, 8, seed=0):
        inputs = [d.input for d in trial.demos]
        assert len(trial.demos) == 8
        assert trial.query.input not in inputs
        assert len(set(inputs)) == len(inputs)


def test_knowledge_trials_and_pool() -> None:
    task = get_task("country_capital")
    table = dict(task.pairs)
    trial = task.sample_trials(1, 4, seed=0)[0]
    for ex in (*trial.demos, trial.query):
        assert table[ex.input] == ex.output and ex.label is None
    assert trial.label_words is None
    assert [task.pairs[i][0] for i in trial.meta["index"]] == [e.input for e in (*trial.demos, trial.query)]
    pool = task.answer_pool(trial)
    assert len(pool) == len(set(pool)) and "Paris" in pool and len(pool) == len(set(table.values()))
    assert len(task.sample_trials(3, None, seed=0)[0].demos) == task.n_demos


def test_knowledge_errors() -> None:
    with pytest.raises(ConfigError, match="n_demos <= 2"):
        KnowledgeTask("t", [("a", "1"), ("b", "2"), ("c", "3")]).sample_trials(1, 3, seed=0)
    with pytest.raises(ConfigError, match="twice"):
        KnowledgeTask("t", [("a", "1"), ("a", "2")])
    with pytest.raises(EmptyInputError):
        KnowledgeTask("t", [("a", "1"), ("b", " ")])
    with pytest.raises(EmptyInputError):
        KnowledgeTask("t", [])


@pytest.mark.parametrize("name", CATEGORIZATION)
@pytest.mark.parametrize("n_demos", [7, 10])
def test_categorization_balance_and_mapping(name: str, n_demos: int) -> None:
    task = get_task(name)
    trials = task.sample_trials(60, n_demos, seed=3)
    mappings, query_classes, orders = Counter(), Counter(), set()
    for t in trials:
        counts = Counter(d.label for d in t.demos)
        assert abs(counts[0] - counts[1]) == n_demos % 2 and counts[0] + counts[1] == n_demos
        assert sorted(t.label_words) == sorted(task.labels)
        for ex in (*t.demos, t.query):
            assert ex.output == t.label_words[ex.label]
        assert t.meta["class"] == tuple(e.label for e in (*t.demos, t.query))
        assert task.answer_pool(t) == list(t.label_words)
        mappings[t.label_words] += 1
        query_classes[t.query.label] += 1
        orders.add(tuple(d.label for d in t.demos))
    assert len(mappings) == 2 and min(mappings.values()) > 10  # mapping drawn per trial
    assert min(query_classes.values()) > 10  # query class random
    assert len(orders) > 10  # demonstration order shuffled


def test_simple_string_rule_and_meta() -> None:
    task = get_task("simple_string", short=(3, 5), long=(9, 12), labels=("A", "B"))
    for t in task.sample_trials(20, 10, seed=0):
        exs = (*t.demos, t.query)
        assert t.meta["length"] == tuple(len(e.input) for e in exs)
        for e in exs:
            assert e.input.isalpha() and e.input.islower()
            assert (9 <= len(e.input) <= 12) if e.label == 1 else (3 <= len(e.input) <= 5)
    with pytest.raises(ConfigError):
        get_task("simple_string", short=(2, 8), long=(6, 10))


def test_digit_rule() -> None:
    task = get_task("digit", threshold=5, margin=1)
    for t in task.sample_trials(20, 10, seed=0):
        for e, first in zip((*t.demos, t.query), t.meta["first_digit"]):
            assert e.input.isdigit() and int(e.input[0]) == first
            assert (first >= 6) if e.label == 1 else (1 <= first <= 3)


def test_two_d_rule() -> None:
    for t in get_task("two_d", coord=(0, 5), margin=2).sample_trials(20, 10, seed=0):
        for e, a, b in zip((*t.demos, t.query), t.meta["a"], t.meta["b"]):
            assert e.input == f"({a}, {b})" and abs(a - b) >= 2 and 0 <= min(a, b) and max(a, b) <= 5
            assert (a > b) == (e.label == 1)


def test_fixed_mapping_and_bad_labels() -> None:
    t = get_task("digit", labels=("x", "y"), shuffle_labels=False).sample_trials(5, 4, seed=0)
    assert all(tr.label_words == ("x", "y") for tr in t)
    with pytest.raises(ConfigError):
        get_task("digit", labels=("x", "x"))
    with pytest.raises(ConfigError):
        get_task("digit", labels=("x",))


# --- registry ----------------------------------------------------------------------------------------------------

def test_registry() -> None:
    assert set(KNOWLEDGE + CATEGORIZATION) <= set(list_tasks())
    desc = describe_tasks()
    assert all(desc[n] and "\n" not in desc[n] for n in list_tasks())
    with pytest.raises(ConfigError, match="country_capital"):
        get_task("no_such_task")
    with pytest.raises(ConfigError, match="no parameter"):
        get_task("digit", nope=1)
    assert get_task("antonyms").kind == "knowledge" and get_task("two_d").kind == "categorization"
    register_task("tiny_test_task", lambda: KnowledgeTask("tiny_test_task", [("a", "b"), ("c", "d")]), "tiny",
                  overwrite=True)
    assert get_task("tiny_test_task").pairs == (("a", "b"), ("c", "d"))
    with pytest.raises(ConfigError, match="already registered"):
        register_task("antonyms", lambda: None, "x")


# --- custom files ------------------------------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_custom_knowledge_formats(tmp_path: Path) -> None:
    rows = [{"input": f"w{i}", "output": f"v{i}"} for i in range(6)]
    js = _write(tmp_path, "k.json", json.dumps(rows, indent=2))
    jl = _write(tmp_path, "k.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    cs = _write(tmp_path, "k.csv", "input,output\n" + "".join(f"{r['input']},{r['output']}\n" for r in rows))
    tasks = [load_task_file(js), get_task(f"file:{jl}"), get_task(str(cs))]
    for t in tasks:
        assert isinstance(t, KnowledgeTask) and t.pairs == tuple((r["input"], r["output"]) for r in rows)
    assert tasks[0].name == "k"
    assert tasks[0].sample_trials(3, 3, seed=1) == tasks[2].sample_trials(3, 3, seed=1)


def test_custom_categorization(tmp_path: Path) -> None:
    lines = ["input,label"] + [f"good{i},pos" for i in range(6)] + [f"bad{i},neg" for i in range(5)]
    p = _write(tmp_path, "sent.csv", "\n".join(lines) + "\n")
    t = load_task_file(p, labels=("A", "B"))
    assert isinstance(t, FileCategorizationTask) and t.class_names == ("pos", "neg")
    for tr in t.sample_trials(20, 8, seed=0):
        assert Counter(d.label for d in tr.demos) == {0: 4, 1: 4}
        assert sorted(tr.label_words) == ["A", "B"]
        for e in (*tr.demos, tr.query):
            assert e.input.startswith("good" if e.label == 0 else "bad") and e.output == tr.label_words[e.label]
        assert tr.query.input not in [d.input for d in tr.demos]
    fixed = load_task_file(p, use_file_labels=True).sample_trials(3, 4, seed=0)
    assert all(tr.label_words == ("pos", "neg") for tr in fixed)
    with pytest.raises(ConfigError, match="too few"):
        t.sample_trials(1, 12, seed=0)


@pytest.mark.parametrize(
    "fname, text, pattern",
    [
        ("e.json", "", "no rows"),
        ("e.jsonl", "\n\n", "no rows"),
        ("e.csv", "", "no rows"),
        ("e.json", "[]", "no rows"),
        ("m.json", '[\n {"input": "a", "output": "b"},\n {"input": "c"}\n]', "line 3: missing field 'output'"),
        ("m.jsonl", '{"input": "a", "output": "b"}\n{"output": "d"}\n', "line 2: missing field 'input'"),
        ("m.csv", "input,output\na,b\nc\n", "line 3: missing field 'output'"),
        ("m.csv", "input,answer\na,b\n", "line 2: missing field 'output'"),
        ("v.json", '[{"input": "a", "output": "b"},\n{"input": " ", "output": "d"}]', "line 2: field 'input' is empty"),
        ("v.csv", "input,output\na,b\nc,\n", "line 3: field 'output' is empty"),
        ("v.jsonl", '{"input": "a", "output": ["b"]}\n', "line 1: field 'output' must be a string"),
        ("d.jsonl", '{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n{"input": "a", "output": "x"}\n',
         "line 3: input 'a' repeats line 1"),
        ("c.csv", "input,label\na,x\nb,y\nc,z\n", "line 4: a third label 'z'"),
        ("c.csv", "input,label\na,x\nb,x\n", "only one label 'x'"),
        ("s.json", '[{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}]', "line 2: expected ','"),
        ("s.json", '[{"input": "a", "output": "b"},\n{"input": "c" "output": "d"}]', "line 2: invalid JSON"),
        ("s.jsonl", '{"input": "a", "output": "b"}\n{"input": \n', "line 2: invalid JSON"),
        ("o.json", '{"input": "a", "output": "b"}', "line 1: expected a JSON list"),
        ("b.json", '[{"input": "a", "output": "b", "label": "c"}]', "line 1: has both"),
        ("x.txt", "a,b\n", "unknown task file type"),
    ],
)
def test_custom_file_errors(tmp_path: Path, fname: str, text: str, pattern: str) -> None:
    p = _write(tmp_path, fname, text)
    with pytest.raises(TaskFileError, match=pattern) as err:
        load_task_file(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_custom_file_misc(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="no such task file"):
        get_task(f"file:{tmp_path / 'missing.csv'}")
    p = _write(tmp_path, "dup.jsonl", '{"input": "a", "output": "b"}\n{"input": "a", "output": "b"}\n'
                                     '{"input": "c", "output": 3}\n')
    assert load_task_file(p).pairs == (("a", "b"), ("c", "3"))  # exact duplicate dropped, number -> string
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_task_file(p, labels=("A", "B"))
    with pytest.raises(ConfigError, match="kind"):
        load_task_file(p, kind="regression")


# --- tokenizer checks (real SmolLM2 tokenizer) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    import taskvec.models.registry as r
    from taskvec.errors import ModelNotFoundError

    try:
        path = r.prepare_named("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(f"smollm2-135m not available: {err}")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def test_first_token_id(tok) -> None:
    ids = tok(" Paris", add_special_tokens=False)["input_ids"]
    assert first_token_id(tok, "Paris") == ids[0]
    assert first_token_id(tok, "Kuala Lumpur") == tok(" Kuala Lumpur", add_special_tokens=False)["input_ids"][0]
    groups = first_token_collisions(tok, ["San Jose", "San Salvador", "Paris", "Paris"])
    assert list(groups.values()) == [["San Jose", "San Salvador"]]


def test_check_label_words(tok) -> None:
    ids = check_label_words(tok, ["foo", "bar"])
    assert ids == [first_token_id(tok, "foo"), first_token_id(tok, "bar")] and ids[0] != ids[1]
    with pytest.raises(TokenizationError, match="'supercalifragilistic' is"):
        check_label_words(tok, ["foo", "supercalifragilistic"])
    with pytest.raises(TokenizationError, match="share"):
        check_label_words(tok, ["foo", "foo"])
    # In SmolLM2 " 0" is two tokens (" ", "0"): the error names the label and its tokens.
    with pytest.raises(TokenizationError, match=r"label '0' is 2 tokens \(' ', '0'\)"):
        check_label_words(tok, ["0", "1"])


def test_filter_for_tokenizer(tok) -> None:
    task = get_task("country_capital")
    same, dropped = filter_for_tokenizer(task, tok)
    assert same is task and dropped == []  # first-token scoring: nothing dropped by default
    strict, dropped = filter_for_tokenizer(get_task("country_capital", single_token_answers=True), tok)
    assert dropped and len(strict.pairs) + len(dropped) == len(task.pairs)
    assert all(len(tok(" " + y, add_special_tokens=False)["input_ids"]) == 1 for _, y in strict.pairs)
    by_input = {d.input: d for d in dropped}
    assert "Kuala Lumpur" in {d.output for d in dropped} and len(by_input["Malaysia"].tokens) >= 2
    cat = get_task("simple_string", labels=("foo", "bar"))
    assert filter_for_tokenizer(cat, tok) == (cat, [])
    with pytest.raises(TokenizationError):
        filter_for_tokenizer(get_task("digit", labels=("0", "1")), tok)


# --- word categorization tasks (packaged word lists) --------------------------------------------------------------

WORD_CATEGORIZATION = {"sentiment": ("positive", "negative"), "animal_object": ("animal", "object"),
                       "food_body": ("food", "body part"), "color_number": ("color", "number")}


@pytest.mark.parametrize("name", WORD_CATEGORIZATION)
def test_word_categorization_data(name: str) -> None:
    rows = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert all(set(r) == {"input", "label"} for r in rows)
    inputs = Counter(r["input"] for r in rows)
    assert [x for x, n in inputs.items() if n > 1] == []  # no input repeats (within or across classes)
    for r in rows:
        assert r["input"].strip() == r["input"] == r["input"].lower() != ""
    per_class = Counter(r["label"] for r in rows)
    assert tuple(per_class) == WORD_CATEGORIZATION[name] and min(per_class.values()) >= 60
    task = get_task(name)
    assert task.kind == "categorization" and task.class_names == WORD_CATEGORIZATION[name]
    assert task.labels == ("A", "B") and task.n_demos == 16 and len(task.rows) == len(rows)
    assert task.source == f"taskvec/tasks/data/{name}.json" and task.params()["source"] == task.source
    banned = {"a", "b", "x", "y", *WORD_CATEGORIZATION[name]}
    assert not banned & set(inputs)  # no input equals a label word or a class name
    assert describe_tasks()[name] and "\n" not in describe_tasks()[name]


@pytest.mark.parametrize("name", WORD_CATEGORIZATION)
def test_word_categorization_trials(name: str) -> None:
    task = get_task(name)
    table = {x: c for x, c in task.rows}
    a = task.sample_trials(30, None, seed=5)
    assert a == get_task(name).sample_trials(30, None, seed=5) and a != task.sample_trials(30, None, seed=6)
    mappings = Counter()
    for t in a:
        exs = (*t.demos, t.query)
        assert len(t.demos) == 16 and Counter(d.label for d in t.demos) == {0: 8, 1: 8}
        assert len({e.input for e in exs}) == 17  # distinct, query not among the demos
        assert t.meta["class"] == tuple(e.label for e in exs)
        assert all(table[e.input] == e.label and e.output == t.label_words[e.label] for e in exs)
        assert task.answer_pool(t) == list(t.label_words) and sorted(t.label_words) == ["A", "B"]
        mappings[t.label_words] += 1
    assert len(mappings) == 2 and min(mappings.values()) >= 5  # class -> word mapping drawn per trial
    fixed = get_task(name, labels=("X", "Y"), n_demos=6, shuffle_labels=False)
    t = fixed.sample_trials(4, None, seed=0)
    assert all(tr.label_words == ("X", "Y") and len(tr.demos) == 6 for tr in t)
    with pytest.raises(ConfigError, match="no parameter"):
        get_task(name, nope=1)
    with pytest.raises(ConfigError, match="too few"):
        task.sample_trials(1, 200, seed=0)


@pytest.mark.parametrize("name", WORD_CATEGORIZATION)
def test_word_categorization_task_for_smollm2(name: str, tiny_llama) -> None:
    from taskvec.tasks import task_for

    task = task_for(name, tiny_llama.tokenizer)
    assert task.labels == ("A", "B")
    ids = check_label_words(tiny_llama.tokenizer, task.labels)
    assert len(set(ids)) == 2
    assert all(len(tiny_llama.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in task.labels)
    xy = task_for(name, tiny_llama.tokenizer, labels=("X", "Y"))
    assert xy.labels == ("X", "Y") and sorted(xy.sample_trials(1, seed=0)[0].label_words) == ["X", "Y"]


@pytest.mark.parametrize("name", WORD_CATEGORIZATION)
@pytest.mark.parametrize("n_demos", [7, 10])
def test_word_categorization_balance_and_mapping(name: str, n_demos: int) -> None:
    test_categorization_balance_and_mapping(name, n_demos)  # the generated tasks' checks, odd and even n_demos


# --- peer formats, repeated inputs, names of task files (issues 24 and 25) --------------------------------------

def test_hendel_format_a_json_object_mapping_input_to_output_loads_as_it_is(tmp_path: Path) -> None:
    p = _write(tmp_path, "antonyms_hendel.json", '{\n  "hot": "cold",\n  "tall": "short",\n  "up": 3\n}\n')
    t = load_task_file(p)
    assert isinstance(t, KnowledgeTask) and t.name == "antonyms_hendel"
    assert t.pairs == (("hot", "cold"), ("tall", "short"), ("up", "3"))
    assert t.file_stats == {"rows": 3, "duplicates_merged": 0, "conflicts": 0, "conflict_rows_dropped": 0,
                            "on_conflict": "error"}
    assert t.params()["rows"] == 3 and t.params()["source"] == str(p)
    cat = _write(tmp_path, "c.json", json.dumps({f"good{i}": "pos" for i in range(3)} | {f"bad{i}": "neg"
                                                                                          for i in range(3)}))
    c = load_task_file(cat, kind="categorization", use_file_labels=True)
    assert isinstance(c, FileCategorizationTask) and c.class_names == ("pos", "neg")


def test_todd_format_a_json_list_of_rows_loads_as_it_is(tmp_path: Path) -> None:
    rows = [{"input": "hot", "output": "cold"}, {"input": "tall", "output": "short"}]
    t = get_task(f"file:{_write(tmp_path, 'antonym.json', json.dumps(rows))}")
    assert t.pairs == (("hot", "cold"), ("tall", "short")) and t.name == "antonym"


@pytest.mark.parametrize("text, pattern", [
    ('{"input": "a", "output": "b"}', "line 1: expected a JSON list of rows, but this object is one row"),
    ('{"a": "b",\n "c": ["d"]}', "line 2: the output of 'c' must be a string or a number"),
    ('{"a": "b",\n "c": ""}', "line 2: the output of 'c' is empty"),
    ('{"a": "b",\n "c" "d"}', "line 2: expected ':' after the input 'c'"),
    ('{"a": "b",\n 3: "d"}', "line 2: expected an input in double quotes"),
    ('{"a": "b"} x', "line 1: text after the closing '}'"),
    ('{}', "no rows"),
    ('"just a string"', "expected a JSON list of objects .* or an object mapping input -> output"),
])
def test_json_object_files_that_are_wrong_say_where_in_one_line(tmp_path: Path, text: str, pattern: str) -> None:
    p = _write(tmp_path, "o.json", text)
    with pytest.raises(TaskFileError, match=pattern) as err:
        load_task_file(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


CONFLICTING = {  # file -> text: "a" twice with different outputs, "c" repeated exactly, "e" twice differently
    "k.jsonl": ('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n{"input": "a", "output": "x"}\n'
                '{"input": "c", "output": "d"}\n{"input": "e", "output": "f"}\n{"input": "g", "output": "h"}\n'
                '{"input": "e", "output": "y"}\n'),
    "k.csv": "input,output\na,b\nc,d\na,x\nc,d\ne,f\ng,h\ne,y\n",
    "k.json": '{"a": "b", "c": "d", "a": "x", "c": "d", "e": "f", "g": "h", "e": "y"}',
}


@pytest.mark.parametrize("fname", list(CONFLICTING))
def test_an_input_under_two_outputs_follows_on_conflict_and_is_counted(tmp_path: Path, fname: str) -> None:
    p = _write(tmp_path, fname, CONFLICTING[fname])
    with pytest.raises(TaskFileError) as err:
        load_task_file(p)  # "error" is the default: the message names where, the input and both outputs
    msg = str(err.value)
    where = {"k.jsonl": ("line 3", "line 1"), "k.csv": ("line 4", "line 2"),
             "k.json": ("line 1 (entry 3)", "line 1 (entry 1)")}[fname]
    assert f"{where[0]}: input 'a' repeats {where[1]} with a different output ('b' vs 'x')" in msg
    assert "(2 inputs conflict in all)" in msg and "on_conflict" in msg and "\n" not in msg
    first = load_task_file(p, on_conflict="keep_first")
    assert first.pairs == (("a", "b"), ("c", "d"), ("e", "f"), ("g", "h"))
    assert first.file_stats == {"rows": 7, "duplicates_merged": 1, "conflicts": 2, "conflict_rows_dropped": 2,
                                "on_conflict": "keep_first"}
    both = get_task(f"file:{p}", on_conflict="drop_both")
    assert both.pairs == (("c", "d"), ("g", "h"))
    assert both.file_stats["conflict_rows_dropped"] == 4 and both.params()["conflicts"] == 2


def test_on_conflict_in_categorization_files_and_bad_policies(tmp_path: Path) -> None:
    lines = ["input,label", "w,pos", "w,neg"] + [f"good{i},pos" for i in range(3)] + [f"bad{i},neg" for i in range(3)]
    p = _write(tmp_path, "sent.csv", "\n".join(lines) + "\n")
    with pytest.raises(TaskFileError, match="line 3: input 'w' repeats line 2 with a different label"):
        load_task_file(p)
    t = load_task_file(p, on_conflict="drop_both", labels=("A", "B"))
    assert "w" not in [x for x, _ in t.rows] and t.params()["conflict_rows_dropped"] == 2
    with pytest.raises(ConfigError, match="on_conflict must be one of 'error', 'keep_first', 'drop_both', got 'x'"):
        load_task_file(p, on_conflict="x")
    only = _write(tmp_path, "two.csv", "input,output\na,b\na,c\nd,e\n")
    with pytest.raises(TaskFileError, match="only 1 distinct row.* after dropping 2 conflicting row"):
        load_task_file(only, on_conflict="drop_both")


def test_exact_duplicates_are_merged_silently_and_counted(tmp_path: Path) -> None:
    p = _write(tmp_path, "dup.jsonl", '{"input": "a", "output": "b"}\n{"input": "a", "output": "b"}\n'
                                     '{"input": "c", "output": "d"}\n{"input": "c", "output": " d "}\n')
    t = load_task_file(p)
    assert t.pairs == (("a", "b"), ("c", "d")) and t.file_stats["duplicates_merged"] == 2


def test_task_files_go_by_their_stem_made_unique():
    from taskvec.tasks import task_file_path, task_names

    names = task_names(["antonyms", "file:/long/path/a/x.json", "/elsewhere/b/x.csv", "file:/q/antonyms.csv",
                        "simple_string", "file:/z/y.jsonl"])
    assert list(names.values()) == ["antonyms", "x", "x-2", "antonyms-2", "simple_string", "y"]
    assert task_names(["file:/q/country_capital.json"]) == {"file:/q/country_capital.json": "country_capital-2"}
    assert task_file_path("file:/a/x.json") == "/a/x.json" and task_file_path("antonyms") is None


def test_the_docs_example_of_task_files_runs() -> None:
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if "hendel" in b)
    exec(compile(block, "docs/tasks.md", "exec"), {})


def test_use_file_labels_checks_the_files_labels_against_the_tokenizer(tok, tmp_path: Path) -> None:
    from taskvec.tasks import task_for

    rows = [f"x{i},A1" for i in range(4)] + [f"y{i},A2" for i in range(4)]  # " A1", " A2" both start with " A"
    p = _write(tmp_path, "clash.csv", "input,label\n" + "\n".join(rows) + "\n")
    assert task_for(f"file:{p}", tok).labels == ("A", "B")  # the file's labels are not shown: nothing to clash
    with pytest.raises(TokenizationError, match=r"task 'clash': the labels of .*clash.csv \(shown with "
                                                r"use_file_labels\) cannot be scored apart: label 'A1' is 2 tokens"):
        task_for(f"file:{p}", tok, use_file_labels=True)
    ok = _write(tmp_path, "fine.csv", "input,label\n" + "\n".join(r.replace("A1", "yes").replace("A2", "no")
                                                                  for r in rows) + "\n")
    assert task_for(str(ok), tok, use_file_labels=True).labels == ("yes", "no")
