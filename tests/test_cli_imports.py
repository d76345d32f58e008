"""The CLI imports TensorFlow and Keras without their optional packages, which still import afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bisup.cli.common import OPTIONAL_AT_IMPORT, _absent

CHECK = """import sys
from bisup.cli.common import OPTIONAL_AT_IMPORT, quiet_tensorflow
quiet_tensorflow()
print(sorted(name for name in OPTIONAL_AT_IMPORT if name in sys.modules))
import sklearn.metrics, scipy.stats, pandas, matplotlib
print("imported after")
"""


def test_tensorflow_and_keras_load_without_the_optional_packages():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "imported after"]


def test_absent_blocks_only_inside_and_leaves_imported_names_alone():
    name = "bisup_no_such_optional_package"
    with _absent((name, "sys")):
        with pytest.raises(ImportError):
            __import__(name)
        assert sys.modules["sys"] is sys
    assert name not in sys.modules
    assert "sklearn" in OPTIONAL_AT_IMPORT
