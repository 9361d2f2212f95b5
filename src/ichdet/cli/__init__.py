"""The ``ichdet`` command line: a thin typer layer over the library's stages.

One module per command group; this one only assembles them. Heavy modules (torch, timm, pandas)
are imported inside the commands that need them, so that ``ichdet --help`` and the ONNX
inference path start fast.
"""

from __future__ import annotations

import typer

from ichdet.cli import (
    data_cmds,
    demo_cmd,
    evaluate_cmd,
    inspect_cmds,
    predict_cmds,
    serve_cmd,
    train_cmd,
    validate_cmd,
)

app = typer.Typer(
    name="ichdet",
    help="Intracranial hemorrhage detection on head CT (RSNA 2019 labels).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (
    inspect_cmds.info,
    inspect_cmds.view,
    inspect_cmds.series,
    data_cmds.synth,
    data_cmds.index,
    data_cmds.import_nifti,
    data_cmds.prepare,
    data_cmds.eda,
    train_cmd.train,
    evaluate_cmd.evaluate,
    validate_cmd.validate,
    demo_cmd.demo,
    predict_cmds.predict,
    predict_cmds.export,
    serve_cmd.serve,
    serve_cmd.listen,
):
    app.command()(command)

bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios.", no_args_is_help=True)
bench_app.command("infer")(predict_cmds.bench_infer)
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
