"""Reports: one self-contained ``report.html`` per run directory, written from the directory alone by one HTML
writer (:class:`taskvec.report.html.Page`) with figures that never touch the user's matplotlib backend.

One writer per run kind (the registry, :mod:`taskvec.kinds`, dispatches on the run's kind: ``taskvec report
RUN_DIR`` and :func:`taskvec.write_report`):

* the study: :func:`taskvec.report.local_global.study_report`;
* the analyses: :func:`taskvec.report.runs.saliency_report`, ``dpca_report``, ``heads_report``;
* from scratch: :func:`taskvec.report.runs.write_training_report`, ``write_evaluation_report`` (its page:
  :func:`taskvec.report.evaluation.evaluation_page`) and :func:`taskvec.report.comparison.write_comparison_report`.

Reports read run directories and the experiments' table functions; no experiment imports a report.
"""
