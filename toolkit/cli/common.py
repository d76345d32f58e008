"""The ``bisup`` group and what its commands share: option checks, progress lines, the MQTT options.

Errors a user can fix arrive as one line and a non-zero exit; anything else is reported as an
internal error without a traceback unless ``BISUP_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bisup.converters.errors import BisupError

if TYPE_CHECKING:
    from bisup.converters.artefacts import ExportReport
    from bisup.firmware_bridge.mqtt_link import Broker

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


EXIT_INTERNAL = 70


class BisupGroup(click.Group):
    """Turns the project's error types into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BisupError as exc:  # every error a user can fix, from any package
            raise click.ClickException(str(exc).splitlines()[0]) from None  # details (a log tail) stay in logs
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bisup: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("BISUP_DEBUG"):
                raise
            click.echo(
                f"Error: internal error: {type(exc).__name__}: {exc}. Re-run with BISUP_DEBUG=1 for the traceback "
                "and report it.",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


def trusted(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--trust PUBKEY``: within the command, only bundles signed by one of these keys are read."""

    @click.option("--trust", "trust", multiple=True, envvar="BISUP_TRUST",
                  type=click.Path(path_type=Path, dir_okay=False),
                  help="Ed25519 public key (NAME.pub of `bisup keygen`); repeat for several. Unsigned bundles, "
                       "build folders and bundles signed by another key are refused. Also $BISUP_TRUST.")
    @functools.wraps(command)
    def wrapper(*args: object, trust: tuple[Path, ...] = (), **kwargs: object) -> None:
        if not trust:
            return command(*args, **kwargs)
        from bisup.firmware_bridge.bundle import load_public_key, trusting

        with trusting([load_public_key(path) for path in trust]):
            return command(*args, **kwargs)

    return wrapper


# Packages TensorFlow and Keras import at start-up only to accept their types (scipy sparse matrices, pandas
# frames, scikit-learn estimators) or for Keras's image-gallery plots (matplotlib), each behind an
# ``except ImportError``: about 1.5 s of a 4-5 s import, and no command hands Keras such a type or asks it for
# a plot. A command that uses one itself (calibrate's LogisticRegression) imports it then.
OPTIONAL_AT_IMPORT = ("sklearn", "scipy", "pandas", "matplotlib")


@contextmanager
def _absent(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block ``import NAME`` raises ImportError (a None in sys.modules), which an optional-dependency
    guard takes as 'not installed'; after it the names import as usual. Names already imported are left alone."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras with TensorFlow's C++ start-up chatter (absl's pre-initialisation warning, the
    oneDNN and CPU notes: TF_CPP_MIN_LOG_LEVEL does not reach them) captured, and without their optional imports
    (``OPTIONAL_AT_IMPORT``), before any command uses them. An import that fails shows what it printed."""
    from bisup.converters.quiet import capture_fd

    try:
        with capture_fd(2) as captured, _absent(OPTIONAL_AT_IMPORT):
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    except ImportError:
        sys.stderr.write(captured.text)
        raise


def check_npz(*paths: Path | None) -> None:
    """Data files are checked (exists, an .npz with x) before TensorFlow is imported and models load, which
    takes 15-30 s: a typo must not cost that."""
    from bisup.datasets import check_npz

    for path in paths:
        if path is not None:
            check_npz(path)


def check_model(path: Path) -> None:
    """A Keras model given on the command line exists and has a model's extension (before any import)."""
    from bisup.converters.errors import ConversionError

    if not path.exists():
        raise ConversionError(f"model {path} does not exist")
    if path.is_file() and path.suffix not in (".keras", ".h5"):
        raise ConversionError(f"model {path} must be a .keras file or a SavedModel directory")


class MissingInput(BisupError, ValueError):
    """A path given on the command line that does not exist."""


def check_exists(path: Path | None, what: str, fix: str) -> None:
    """Any other input path: one line naming it and where it comes from."""
    if path is not None and not path.exists():
        raise MissingInput(f"{what} {path} does not exist; {fix}")


@click.group(cls=BisupGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bisup")
def main() -> None:
    """bisup: a small int8 model on a microcontroller that asks a big remote model only when unsure.

    \b
    Typical flow:
      bisup digits build/                        # example model + data (scikit-learn digits)
      bisup boards                               # board profiles and their budgets
      bisup export build/digits.keras --calib build/calib.npz --board esp32s3 --out build/
      bisup calibrate --local build/model.tflite --remote remote.keras --data build/val.npz \\
          --max-remote-fraction 0.3 --out build/
      bisup demo                                 # all of it, end to end, on digits
      bisup demo --exits                         # early exits, split computing, a learned exit policy
    """


def progress(message: str) -> None:
    click.echo(f"bisup: {message}", err=True)


def mqtt_options(command: Callable[..., None]) -> Callable[..., None]:
    """Broker options shared by `bisup bridge` and `bisup device`."""
    for option in reversed([
        click.option("--mqtt", "mqtt_url", help="Broker URL: mqtt://host:1883 or mqtts://host:8883."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="CA certificate that signed the broker's (implies TLS)."),
        click.option("--username", help="MQTT username (`bisup broker --secure` prints them)."),
        click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="File holding the MQTT password (kept off the command line)."),
        click.option("--deployment", "topic_deployment", callback=_deployment,
                     help="MQTT: the deployment level of the topics, bisup/v1/<deployment>/<id>/req, which routes "
                          "each device's requests to the bridges of its own bundle (the same name on both) "
                          "[default: m + the first 16 hex digits of the bundle's model hash]."),
    ]):
        command = option(command)
    return command


def _deployment(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    """Refuse, before any model loads, a name that cannot be one topic level."""
    from bisup.firmware_bridge.mqtt_link import MqttError, check_deployment

    try:
        return None if value is None else check_deployment(value)
    except MqttError as exc:
        raise click.BadParameter(str(exc), context, parameter) from None


def mqtt_broker(mqtt_url: str, tls_ca: Path | None, username: str | None, password_file: Path | None) -> Broker:
    from bisup.firmware_bridge.mqtt_link import Broker

    password = password_file.read_text().strip() if password_file else None
    return Broker.from_url(mqtt_url, username, password, tls_ca)


def one_transport(serial_url: str | None, mqtt_url: str | None) -> None:
    if (serial_url is None) == (mqtt_url is None):
        raise click.UsageError("give exactly one of --serial and --mqtt")


class EmulatedBoards(click.Choice):
    """The board profiles with an [emulation] table, read when the option is parsed or shown, not at import
    (so a profile in BISUP_BOARDS_PATH is offered as a shipped one is)."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # click.Choice sets a tuple at init; this reads the profiles instead
        from bisup.boards import emulated_names

        return tuple(emulated_names())


RISK_HELP = (
    "Risk guarantee: the most local answers whose error rate is at most this, certified with "
    "probability 1-DELTA over the draw of --data (exact binomial tests; {procedure}). "
    "Assumes validation and deployment inputs are exchangeable, e.g. i.i.d. from one distribution."
)


def warn_caveats(board: str, report: ExportReport) -> None:
    """A board's known kernel problems that this model hits, one line each (export and demo alike)."""
    for caveat in report.caveats:
        if caveat["severity"] == "warning":
            message = f"{caveat['message']}: {caveat['detail']}. Fix: {caveat['fix']}."
            click.echo(f"Warning: {board}: {message}", err=True)
