"""The user-side commands: `thresher login | submit | jobs … | models list | datasets list`, over
HTTP with thresher.client (no torch, no database). Server and token from --url / --token, else
THRESHER_URL / THRESHER_TOKEN, else the file `thresher login` wrote.

Exit codes a script can rely on: 0 done (a followed job succeeded), 1 the job failed or was
cancelled, 2 usage, 3 server unreachable, 4 authentication refused, 5 another refusal (the API's
message is printed as it is), 130 interrupted (a followed job keeps running)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from thresher.client import Client, JobDoc, RequestRefused, Unreachable

OK, JOB_FAILED, USAGE, UNREACHABLE, AUTH, REFUSED, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
DEFAULT_URL = "http://127.0.0.1:8000"
BUILTIN_DATA = ("mnist", "fashion-mnist")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "thresher" / "client.json"


def _connection(args: argparse.Namespace) -> tuple[str, str | None]:
    saved: dict[str, Any] = {}
    if config_path().exists():
        try:
            saved = json.loads(config_path().read_text())
        except ValueError:
            saved = {}
    url = args.url or os.environ.get("THRESHER_URL") or saved.get("url") or DEFAULT_URL
    token = args.token or os.environ.get("THRESHER_TOKEN") or saved.get("token")
    return str(url), token


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        # exactly what the API sent: fields it left out stay out
        value = value.model_dump(mode="json", exclude_unset=True)
    print(json.dumps(value, indent=2, sort_keys=True))


def progress_line(job: JobDoc, started: float) -> str:
    p, best = job.progress, job.best
    done, total = p.trials_done, p.trials_total
    elapsed = time.monotonic() - started
    eta = f", about {elapsed * (total - done) / done:.0f} s left" if 0 < done < total else ""
    ratio = (f", best {best.compression_ratio:.2f}× at drop {best.accuracy_drop or 0.0:+.4f} "
             f"(δ {job.max_accuracy_drop})" if best is not None and best.compression_ratio else "")
    # multi-round methods: rounds count from 0; retraining attempts come after the last round
    round_ = (f", round {min(p.round, p.rounds - 1) + 1}/{p.rounds}"
              if p.round is not None and p.rounds else "")
    return (f"{job.status}: {done}/{total} trials, stage {p.stage or '-'}{round_}{ratio}, "
            f"{elapsed:.0f} s{eta}")


@contextmanager
def _interrupt_between_polls() -> Iterator[Callable[[], None]]:
    """Ctrl-C while following takes effect between two polls, as a KeyboardInterrupt raised by
    the returned check, never inside an HTTP read, a document's validation or rich's drawing:
    an interrupt landing there once left the CLI hung with the bar still drawing (CI). The
    wait between polls is at most a second, so Ctrl-C still answers at once to a person."""
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: pressed.set())

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(client: Client, job_id: str, quiet: bool = False) -> JobDoc:
    """Poll the job to its end, showing a live bar on a terminal (rich) or one line per change
    otherwise; returns the finished document. Ctrl-C raises KeyboardInterrupt between polls."""
    with _interrupt_between_polls() as check:
        return _follow(client, job_id, quiet, check)


def _follow(client: Client, job_id: str, quiet: bool, check: Callable[[], None]) -> JobDoc:
    started = time.monotonic()
    if not quiet and sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[note]}"))
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(f"job {job_id[:8]}", total=None, note="")

            def show(job: JobDoc) -> None:
                check()
                p = job.progress
                bar.update(task, completed=p.trials_done, total=p.trials_total or None,
                           note=progress_line(job, started))
                check()

            return client.wait(job_id, progress=show)
    last = ""

    def line(job: JobDoc) -> None:
        nonlocal last
        check()
        text = progress_line(job, started)
        key = text.split(", ")[0:3]
        if not quiet and str(key) != last:
            last = str(key)
            print(text, file=sys.stderr, flush=True)

    return client.wait(job_id, progress=line)


def _finished(client: Client, job: JobDoc, out: str | None, as_json: bool) -> int:
    if job.status != "succeeded":
        if as_json:
            _print_json(job)
        print(f"job {job.id} {job.status}: {job.error or ''}".rstrip(": "), file=sys.stderr)
        return JOB_FAILED
    path = Path(out or f"thresher-{job.id}.safetensors")
    client.download(job.id, path)
    if as_json:
        _print_json({**job.model_dump(mode="json", exclude_unset=True), "downloaded": str(path)})
    else:
        best = job.best
        assert best is not None  # a succeeded job has its best trial
        print(f"job {job.id} succeeded: {best.compression_ratio or 0.0:.2f}× at validation drop "
              f"{best.accuracy_drop or 0.0:+.4f}, test accuracy {job.test_accuracy or 0.0:.4f}; "
              f"wrote {path}")
    return OK


def _submit(client: Client, args: argparse.Namespace) -> int:
    weights = Path(args.model)
    if not weights.is_file():
        print(f"thresher submit: {weights} is not a file", file=sys.stderr)
        return USAGE
    if weights.suffix != ".pt2" and not args.arch:
        print("thresher submit: safetensors weights need --arch (a .pt2 archive does not)", file=sys.stderr)
        return USAGE
    model = client.upload_model(weights, architecture=None if weights.suffix == ".pt2" else args.arch,
                                name=args.name)
    data = (client.upload_dataset(builtin=args.data) if args.data in BUILTIN_DATA and not Path(args.data).exists()
            else client.upload_dataset(args.data))
    spec: dict[str, Any] = {"method": args.method, "max_accuracy_drop": args.delta, "seed": args.seed,
                            "budget": {"trials": args.budget}}
    if args.optimizer:
        spec["optimizer"] = args.optimizer
    if args.spec:
        spec.update(json.loads(args.spec))
    job = client.submit(model.id, data.id, **spec)
    if not args.follow:
        if args.json:
            _print_json(job)
        else:
            print(job.id)
        return OK
    print(f"job {job.id} queued: {args.method}, δ {args.delta}, {args.budget} trials", file=sys.stderr)
    return _following(client, job.id, args.out, args.json)


def _following(client: Client, job_id: str, out: str | None, as_json: bool) -> int:
    try:
        done = follow(client, job_id, quiet=as_json)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running. Follow it again with "
              f"`thresher jobs watch {job_id}`, cancel it with `thresher jobs cancel {job_id}`",
              file=sys.stderr)
        return INTERRUPTED
    return _finished(client, done, out, as_json)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _jobs(client: Client, args: argparse.Namespace) -> int:
    cmd = args.jobs_command
    if cmd == "list":
        page = client.jobs(status=args.status, limit=args.limit)
        if args.json:
            _print_json(page)
            return OK
        _table([[j.id, j.status, j.method, f"{j.progress.trials_done}/{j.progress.trials_total}",
                 f"{(j.best.compression_ratio if j.best else None) or 0:.2f}×", str(j.max_accuracy_drop)]
                for j in page.items], ["id", "status", "method", "trials", "best", "δ"])
        return OK
    if cmd == "show":
        job = client.job(args.id)
        if args.json:
            _print_json(job)
        else:
            print(progress_line(job, time.monotonic()))
            for a in job.artifacts:
                print(f"  download: thresher jobs download {job.id} --format {a.format}")
        return OK
    if cmd == "watch":
        try:
            done = follow(client, args.id, quiet=args.json)
        except KeyboardInterrupt:
            print(f"\nstopped watching; job {args.id} keeps running", file=sys.stderr)
            return INTERRUPTED
        if args.json:
            _print_json(done)
        else:
            print(progress_line(done, time.monotonic()))
        return OK if done.status == "succeeded" else JOB_FAILED
    if cmd == "cancel":
        job = client.cancel(args.id)
        _print_json(job) if args.json else print(f"job {args.id} {job.status}")
        return OK
    if cmd == "export-optuna":
        from cli.optuna_export import export

        if importlib.util.find_spec("optuna") is None:
            print("thresher jobs export-optuna needs optuna: install the worker extra "
                  "(pip install 'thresher[worker]')", file=sys.stderr)
            return USAGE
        out = Path(args.out)
        if out.exists():
            print(f"thresher jobs export-optuna: {out} exists; choose a new file", file=sys.stderr)
            return USAGE
        job, trials = client.job(args.id), client.trials(args.id)
        name = export(job, trials, out, args.study_name)
        doc = {"storage": f"sqlite:///{out}", "study": name, "trials": len(trials)}
        _print_json(doc) if args.json else print(
            f"wrote {len(trials)} trials to study {name!r} in {out}; open it with "
            f"`optuna-dashboard sqlite:///{out}`")
        return OK
    # download
    suffix = ".pt2" if args.format == "pt2" else ".safetensors"
    path = client.download(args.id, args.output or f"thresher-{args.id}-{args.format}{suffix}", args.format)
    _print_json({"path": str(path), "format": args.format}) if args.json else print(f"wrote {path}")
    return OK


def _listing(client: Client, args: argparse.Namespace) -> int:
    page: BaseModel
    if args.command == "models":
        models = client.models(limit=args.limit)
        rows = [[m.id, m.name or "", m.architecture, str(m.total_parameters)] for m in models.items]
        header, page = ["id", "name", "architecture", "parameters"], models
    else:
        datasets = client.datasets(limit=args.limit)
        rows = [[d.id, d.name or "", d.source, str(d.classes),
                 f"{d.splits.train}/{d.splits.validation}/{d.splits.test}"] for d in datasets.items]
        header, page = ["id", "name", "source", "classes", "train/val/test"], datasets
    _print_json(page) if args.json else _table(rows, header)
    return OK


def _login(args: argparse.Namespace) -> int:
    url, token = _connection(args)
    with Client(url, token) as client:
        client.jobs(limit=1)  # the token works
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"url": url, "token": token}))
    print(f"logged in to {url}; saved to {path}")
    return OK


def add_parsers(sub: Any) -> None:
    def connection(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help=f"the API (default: THRESHER_URL, the login file, {DEFAULT_URL})")
        p.add_argument("--token", help="bearer token (default: THRESHER_TOKEN or the login file)")
        p.add_argument("--json", action="store_true", help="print the API's JSON documents")
        return p

    connection(sub.add_parser("login", help="check a server and token and remember them"))
    sp = connection(sub.add_parser("submit", help="upload a model and data, submit a job (--follow: to the end)"))
    sp.add_argument("model", help="a .pt2 torch.export archive, or .safetensors weights with --arch")
    sp.add_argument("--arch", help="the architecture of safetensors weights (thresher: GET /v1/architectures)")
    sp.add_argument("--data", required=True, help=f"a built-in dataset ({', '.join(BUILTIN_DATA)}) or a .npz / .safetensors file")
    sp.add_argument("--method", default="magnitude")
    sp.add_argument("--optimizer", help="default: the method's")
    sp.add_argument("--delta", type=float, required=True, help="max_accuracy_drop, e.g. 0.005")
    sp.add_argument("--budget", type=int, default=100, help="trials (default 100)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--name", help="the model's name")
    sp.add_argument("--spec", help='JSON merged into the job spec, e.g. \'{"olmp": {"rounds": 4}}\'')
    sp.add_argument("--follow", action="store_true", help="show progress to the end, then download")
    sp.add_argument("--out", "-o", help="where --follow writes the checkpoint")
    jp = sub.add_parser("jobs", help="list, show, watch, cancel, download jobs")
    jsub = jp.add_subparsers(dest="jobs_command", required=True)
    jl = connection(jsub.add_parser("list", help="newest first"))
    jl.add_argument("--status")
    jl.add_argument("--limit", type=int, default=50)
    for name, helptext in (("show", "a job's status and downloads"), ("watch", "follow a job to its end"),
                           ("cancel", "cancel a queued or running job")):
        connection(jsub.add_parser(name, help=helptext)).add_argument("id")
    je = connection(jsub.add_parser("export-optuna", help="the job's trials as an optuna study (optuna-dashboard opens it)"))
    je.add_argument("id")
    je.add_argument("--out", required=True, help="a new SQLite file for the study")
    je.add_argument("--study-name", help="default: thresher-<job id>")
    jd = connection(jsub.add_parser("download", help="one of a finished job's downloads"))
    jd.add_argument("id")
    jd.add_argument("--format", default="pruned", help="pruned (default), compact, blockdiag, decomposed, pt2")
    jd.add_argument("--output", "-o")
    for name in ("models", "datasets"):
        lp = sub.add_parser(name, help=f"your {name}")
        lsub = lp.add_subparsers(dest=f"{name}_command", required=True)
        connection(lsub.add_parser("list", help="newest first")).add_argument("--limit", type=int, default=50)


COMMANDS = ("login", "submit", "jobs", "models", "datasets")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "login":
            return _login(args)
        url, token = _connection(args)
        with Client(url, token) as client:
            if args.command == "submit":
                return _submit(client, args)
            if args.command == "jobs":
                return _jobs(client, args)
            return _listing(client, args)
    except Unreachable as exc:
        print(f"thresher: {exc}", file=sys.stderr)
        return UNREACHABLE
    except RequestRefused as exc:
        print(f"thresher: {exc.status} {exc.detail}", file=sys.stderr)
        return AUTH if exc.authentication else REFUSED
    except (OSError, ValueError) as exc:
        print(f"thresher: {exc}", file=sys.stderr)
        return USAGE
