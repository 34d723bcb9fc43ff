"""The import rules that keep the layers apart: the correlation engine, the
audit, the figures and the reports import no torch (they run on result
files, quickly, anywhere); data knows no model."""

import subprocess
import sys

import pytest

NO_TORCH = ["helpers.config", "helpers.common", "helpers.data", "helpers.phantom", "helpers.correlation",
            "helpers.correlate", "helpers.memorization", "helpers.figures", "helpers.sweep_figures",
            "helpers.report"]


@pytest.mark.parametrize("module", NO_TORCH)
def test_module_imports_no_torch_and_no_model(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in ('torch', 'cupy', 'diffusers', 'helpers.stylegan', 'helpers.diffusion') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"{module} imports {done.stdout.strip()} {done.stderr[-500:]}"
