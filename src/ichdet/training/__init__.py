"""Training: a shared loop (``loop``) that trainers plug a task into; the slice CNN's task
(``slice_task``), cross-validation over folds (``cv``), settings and recipes (``config``),
processes and devices (``distributed``) and run folders (``runs``)."""
