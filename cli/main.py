"""`thresher`: migrate, serve, worker, up, token, zoo train; and for users of a running service,
login, submit, jobs, models, datasets (cli.client_commands).

Heavy imports stay inside the subcommands: `serve` must never load torch, and `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from cli import client_commands
from core import builtin_datasets, zoo
from core.errors import SchemaBehind
from core.settings import Settings
from core.zoo import CAFFE_ITERATIONS, TRAINING_RECIPES


def _migrate(args: argparse.Namespace, cfg: Settings) -> int:
    from store.db import upgrade

    upgrade(cfg.database_url)
    print(f"database {_safe_url(cfg.database_url)} is at the latest schema")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _serve(args: argparse.Namespace, cfg: Settings) -> int:
    import uvicorn

    from service.app import create_app

    app = create_app(cfg)
    print(f"Thresher API on http://{args.host}:{args.port}/  (docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


# A worker (and `up`, which starts one, and `zoo train`) needs the `worker` extra; the API image
# is installed without it.
WORKER_PACKAGES = ("torch", "nevergrad", "optuna")


class MissingWorkerExtra(Exception):
    pass


def _require_worker_extra(command: str) -> None:
    # find_spec does not import: checking costs nothing on a machine that has them.
    missing = [name for name in WORKER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingWorkerExtra(
            f"`thresher {command}` needs {', '.join(missing)}, which this installation lacks (an API-only "
            "install): install the worker extra, e.g. pip install 'thresher[worker]', or use the "
            "Dockerfile's `worker` target")


def _worker(args: argparse.Namespace, cfg: Settings) -> int:
    _require_worker_extra("worker")
    from workers.jobs.loop import Worker
    from workers.runtime.gpu_slots import NoFreeGpu

    try:
        worker = Worker(cfg, name=args.name)
    except NoFreeGpu as exc:
        print(f"thresher: {exc}", file=sys.stderr)
        return 2
    worker.install_signal_handlers()
    worker.serve(exit_when_idle=args.exit_when_idle, max_jobs=args.max_jobs)
    return 0


def _tokens(args: argparse.Namespace, cfg: Settings) -> int:
    from store import tokens
    from store.db import check_schema, make_engine, make_sessionmaker, transaction

    engine = make_engine(cfg.database_url)
    check_schema(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as s:
        if args.token_command == "create":
            try:
                row, plaintext = tokens.create(s, args.name, admin=args.admin)
            except ValueError as exc:
                print(f"thresher: {exc}", file=sys.stderr)
                return 2
            print(plaintext)
            print(f"token {row.id} for {row.name}{' (admin)' if row.admin else ''}: shown once, "
                  "only its hash is stored", file=sys.stderr)
        elif args.token_command == "list":
            print(f"{'id':<37}{'name':<24}{'admin':<7}{'created (UTC)':<21}revoked")
            for t in tokens.all_tokens(s):
                when = t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else "-"
                print(f"{t.id:<37}{t.name:<24}{'yes' if t.admin else 'no':<7}"
                      f"{t.created_at.strftime('%Y-%m-%d %H:%M'):<21}{when}")
        else:
            revoked = tokens.revoke(s, args.id)
            if revoked is None:
                print(f"thresher: no token {args.id!r}", file=sys.stderr)
                return 2
            print(f"revoked token {revoked.id} ({revoked.name})")
    return 0


ADMIN_TOKEN_FILE = Path("var") / "admin-token"


def _first_admin_token(cfg: Settings) -> None:
    """On first start, create a local admin token, print it, and keep it in ./var/admin-token
    (mode 0600) for the walkthrough; later starts reuse whatever tokens exist."""
    from store import tokens
    from store.db import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(cfg.database_url))) as s:
        if tokens.has_active_admin(s):
            return
        _, plaintext = tokens.create(s, "admin", admin=True)
    ADMIN_TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ADMIN_TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plaintext + "\n")
    print(f"created the admin token (also in {ADMIN_TOKEN_FILE}, readable only by you):\n"
          f"  {plaintext}", flush=True)


def _up(args: argparse.Namespace, cfg: Settings) -> int:
    """API + one worker process on the same database; migrates first (the zero-setup default)."""
    from store.db import upgrade

    _require_worker_extra("up")
    upgrade(cfg.database_url)
    _first_admin_token(cfg)
    env = dict(os.environ, THRESHER_DATABASE_URL=cfg.database_url)
    worker = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], env=env)
    # uvicorn re-raises the signal that stopped it once it has shut down: with the default SIGTERM
    # action this process would end there, before it stops its worker (left polling for ever).
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        return _serve(args, cfg)
    finally:
        worker.send_signal(signal.SIGTERM)  # it drains: its job goes back to the queue
        try:
            worker.wait(timeout=cfg.drain_seconds + 10)
        except subprocess.TimeoutExpired:
            worker.kill()


class _ProgressBar:
    """A one-line bar on stderr, redrawn at most once per percent (a log file stays short)."""

    WIDTH = 30

    def __init__(self) -> None:
        self.shown = -1

    def __call__(self, step: int, steps: int, note: str) -> None:
        percent = 100 * step // max(steps, 1)
        if percent == self.shown and step < steps:
            return
        self.shown = percent
        filled = self.WIDTH * step // max(steps, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d}% "
                         f"{step}/{steps} {note}")
        if step >= steps:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _zoo_train(args: argparse.Namespace, cfg: Settings) -> int:
    _require_worker_extra("zoo train")
    from core.zoo import ONECYCLE, OneCycle
    from workers.models.reference_training import train_builtin
    from workers.runtime import device as devices

    dev = devices.pick(args.device or cfg.device)
    recipe = ONECYCLE.get(args.architecture, OneCycle())
    epochs = recipe.epochs if args.epochs is None else args.epochs
    length = (f"{args.iterations} iterations" if args.recipe == "caffe" else
              f"{epochs} epochs, batch {recipe.batch_size}, SGD lr {recipe.lr}"
              + (", shifted and mirrored images" if recipe.augment else ""))
    print(f"training {args.architecture} on {args.dataset} ({devices.describe(dev)}), "
          f"{args.recipe} recipe, {length} …", flush=True)
    result = train_builtin(args.architecture, args.dataset, cfg.datasets_dir, recipe=args.recipe,
                           epochs=epochs, iterations=args.iterations, seed=args.seed,
                           device=dev, out=Path(args.out),
                           progress=None if args.no_progress else _ProgressBar())
    print(f"wrote {args.out}: validation accuracy {result.val_accuracy:.4f}, "
          f"test accuracy {result.test_accuracy:.4f}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thresher", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="upgrade the database schema to the latest revision")

    for name, helptext in (("serve", "run the API alone"),
                           ("up", "run the API and one worker (SQLite under ./var by default)")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=8000)

    wp = sub.add_parser("worker", help="run one worker")
    wp.add_argument("--name", help="worker name (default: host-pid)")
    wp.add_argument("--exit-when-idle", action="store_true", help="exit once the queue is empty")
    wp.add_argument("--max-jobs", type=int, help="exit after this many jobs")

    kp = sub.add_parser("token", help="API tokens")
    ksub = kp.add_subparsers(dest="token_command", required=True)
    kc = ksub.add_parser("create", help="create a token and print it (once)")
    kc.add_argument("--name", required=True, help="the principal that owns what the token creates")
    kc.add_argument("--admin", action="store_true", help="may see every principal's resources")
    ksub.add_parser("list", help="list tokens (never their values)")
    kr = ksub.add_parser("revoke", help="revoke a token by id")
    kr.add_argument("id")

    zp = sub.add_parser("zoo", help="built-in architectures")
    zsub = zp.add_subparsers(dest="zoo_command", required=True)
    tp = zsub.add_parser("train", help="train a reference model on a built-in dataset")
    tp.add_argument("architecture", choices=[a.name for a in zoo.BUILTINS])
    tp.add_argument("--dataset", default="mnist", choices=builtin_datasets.NAMES)
    tp.add_argument("--out", required=True, help="output .safetensors file")
    tp.add_argument("--recipe", choices=TRAINING_RECIPES, default="onecycle",
                    help="onecycle (ours, the strongest reference) or caffe (Caffe's LeNet solver, "
                    "as the DNS and OLMP papers trained their references)")
    tp.add_argument("--epochs", type=int, help="onecycle: epochs (default: the architecture's "
                    "recipe, 12 for the LeNets, 15 for vgg-fashion)")
    tp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tp.add_argument("--iterations", type=int, default=CAFFE_ITERATIONS,
                    help=f"caffe: SGD iterations of 64 images (default {CAFFE_ITERATIONS})")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--device", help="cpu, cuda, … (default: THRESHER_DEVICE or auto)")
    client_commands.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in client_commands.COMMANDS:  # over HTTP: no settings, no database
        return client_commands.run(args)
    logging.basicConfig(level=os.environ.get("THRESHER_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    cfg = Settings()
    handlers = {"migrate": _migrate, "serve": _serve, "worker": _worker, "up": _up, "token": _tokens}
    try:
        if args.command == "zoo":
            return _zoo_train(args, cfg)
        return handlers[args.command](args, cfg)
    except (SchemaBehind, MissingWorkerExtra) as exc:
        print(f"thresher: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
