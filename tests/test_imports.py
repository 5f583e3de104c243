import subprocess
import sys
from pathlib import Path


def _printed(code: str) -> str:
    """What `code` prints, run in a fresh interpreter from the repository root."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    return out.stdout.strip()


def test_api_app_loads_no_torch_nevergrad_or_optuna(sqlite_url: str) -> None:
    """DESIGN §1: the API process never imports torch (nor the optimizers)."""
    code = (
        "import sys\n"
        "from core.settings import Settings\n"
        "from service.app import create_app\n"
        f"app = create_app(Settings(database_url={sqlite_url!r}))\n"
        "from fastapi.testclient import TestClient\n"
        "c = TestClient(app)\n"
        "assert c.get('/healthz').status_code == 200\n"
        "assert c.get('/login').status_code == 200\n"
        "assert c.get('/v1/jobs').status_code == 401\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'nevergrad', 'optuna'})\n"
        "print(heavy)\n"
    )
    assert _printed(code) == "[]"


def test_the_user_side_client_and_cli_load_no_server_or_torch_code() -> None:
    """`pip install thresher` without the worker extra: the client and the CLI's client
    commands import httpx, pydantic and the declared documents only."""
    code = (
        "import sys\n"
        "import thresher.client, cli.client_commands\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'sqlalchemy', "
        "'fastapi', 'nevergrad', 'optuna', 'service', 'store', 'workers'})\n"
        "print(heavy)\n"
    )
    assert _printed(code) == "[]"
