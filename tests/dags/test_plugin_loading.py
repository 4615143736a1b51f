"""Airflow's plugin loader takes only the plugin file; the package keeps one copy, and no stdlib name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: which modules were imported first decides what a shadowed name breaks.
_PROBE = """
import json, sys
from pathlib import Path
from airflow import plugins_manager

plugins, errors = plugins_manager._get_plugins()
package = Path(sys.argv[1]).resolve()
import secrets
stray = sorted(
    name
    for name, mod in list(sys.modules.items())
    if getattr(mod, "__file__", None)
    and Path(mod.__file__).resolve().is_relative_to(package)
    and not (name == "openai_batch" or name.startswith("openai_batch."))
)
print(json.dumps({
    "plugins": sorted(p.name for p in plugins),
    "errors": errors,
    "stray": stray,
    "secrets_file": secrets.__file__,
    "has_choice": hasattr(secrets, "choice"),
}))
"""


def test_only_the_ui_plugin_file_is_loaded_and_no_module_shadows_the_standard_library() -> None:
    env = dict(os.environ)
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT / "plugins" / "openai_batch")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["plugins"] == ["openai_batch_ui"], found
    assert found["errors"] == {}, found
    # openai_batch/secrets.py loaded as `secrets` broke SimpleAuthManager's password generation.
    assert found["stray"] == [], found
    assert found["has_choice"], found
    assert "openai_batch" not in found["secrets_file"], found
