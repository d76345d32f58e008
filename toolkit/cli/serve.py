"""``bisup bridge``, ``device`` and ``broker``: the long-running services."""

from __future__ import annotations

import json
from pathlib import Path
from types import FrameType

import click

from bisup.cli.common import (
    check_exists,
    check_npz,
    main,
    mqtt_broker,
    mqtt_options,
    one_transport,
    progress,
    trusted,
)


@main.command()
@click.option("--serial", "serial_url",
              help="Port as a pyserial URL: /dev/ttyUSB0, socket://host:port, spy://..., a pty path; or `pty` "
                   "to make a pseudo-terminal and print the path a `bisup device --serial PATH` opens.")
@mqtt_options
@click.option("--remote", required=True,
              help="Remote model: a path (.keras, SavedModel dir, .tflite) or a server URL. For a multi-exit bundle: "
                   "the folder `bisup exits` wrote (tail0.keras ...), or a URL with {split} in it (one per tail).")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="A .bisup bundle, or a folder with model.tflite (bisup export) and thresholds.json; or a "
                   "multi-exit export's folder (stages.json, policy.json), served with its remote tails (SPLIT).")
@click.option("--baud", default=921600, show_default=True, help="Baud rate for real UARTs.")
@click.option("--json-log", type=click.Path(path_type=Path, dir_okay=False),
              help="Append one JSON line per relay: time, device, seq, labels, confidences, decision, latency.")
@click.option("--wait", is_flag=True, help="Serial: wait for the port to appear instead of failing at once.")
@click.option("--workers", default=1, show_default=True, help="MQTT: worker clients in this process.")
@click.option("--threads", default=16, show_default=True, help="MQTT: concurrent requests per worker.")
@click.option("--group", default="bisup", show_default=True, help="MQTT: shared-subscription group.")
@click.option("--name", "worker_name", default=None,
              help="MQTT: stable worker name, part of the client id, so a restarted bridge resumes its session "
                   "[default: this host's name and process id, unique per bridge].")
@click.option("--session-expiry", default=5, show_default=True,
              help="MQTT: seconds the broker keeps a dead worker's session and its queued requests.")
@click.option("--legacy-topics", is_flag=True,
              help="MQTT: also serve the topics of devices without a deployment level, bisup/v1/<id>/req (they "
                   "cannot be routed: give this to one deployment per broker, the one those devices run).")
@click.option("--device-rate", default=100.0, show_default=True, type=click.FloatRange(min=0),
              help="MQTT admission: INFER/SPLIT a second one device may sustain per worker, in bursts of a second's "
                   "worth (0: no limit); more are answered BUSY and the device answers locally meanwhile.")
@click.option("--device-queue", default=4, show_default=True, type=click.IntRange(1),
              help="MQTT admission: requests of one device waiting per worker; devices are served in turn, at most "
                   "--device-in-flight of one device's requests at once, so one device's backlog delays only it.")
@click.option("--device-in-flight", default=2, show_default=True, type=click.IntRange(1),
              help="MQTT admission: requests of one device served at once per worker.")
@click.option("--max-queued", default=1024, show_default=True, type=click.IntRange(1),
              help="MQTT admission: requests waiting per worker, all devices together (and at most 32 MiB of "
                   "them): the bound on the bridge's memory under any flood; past it requests are answered BUSY.")
@click.option("--max-batch", default=32, show_default=True, help="Remote: most requests in one batched call (1: none).")
@click.option("--max-delay-ms", default=2.0, show_default=True, help="Remote: longest wait to fill a batch.")
@click.option("--device-wait-ms", default=2000.0, show_default=True,
              help="How long devices wait for an answer in all, over every resend (`bisup device` and the "
                   "firmware templates: 500 ms x 4 attempts). The remote deadline is derived from it.")
@click.option("--deadline-ms", type=float, default=None,
              help="Remote: give up on a request after this long and answer `fallback` (the device keeps its own "
                   "label) [default: --device-wait-ms less a quarter, so the fallback arrives while the device "
                   "still waits].")
@click.option("--breaker-failures", default=5, show_default=True,
              help="Remote: consecutive failures that open the circuit breaker (0: no breaker).")
@click.option("--breaker-cooldown", default=10.0, show_default=True,
              help="Remote: seconds the breaker answers `fallback` at once before it tries the remote again.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0: any free one, printed): requests, outcomes, remote "
                   "calls, errors by code, latency histograms, device STATS, breaker state and the drift alarm.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint listens on (0.0.0.0 for a Prometheus on another machine).")
@click.option("--drift-window", default=500, show_default=True, type=click.IntRange(100),
              help="Drift alarm: device inferences over which the live remote fraction is compared with the "
                   "calibrated one (relayed disagreement: a fifth of it, at least 100 relays).")
@click.option("--collect", "collect_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep every relayed input with the remote's label and probabilities (and whether the remote "
                   "supervisor accepted it) in .npz shards here, once per input, for `bisup retrain`.")
@click.option("--collect-max-mb", default=1024.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Stop collecting (and say so) once the --collect folder holds this much.")
@trusted
def bridge(serial_url: str | None, mqtt_url: str | None, tls_ca: Path | None, username: str | None,
           password_file: Path | None, topic_deployment: str | None, remote: str, bundle_dir: Path, baud: int,
           json_log: Path | None, wait: bool, workers: int, threads: int, group: str, worker_name: str | None,
           session_expiry: int, legacy_topics: bool, device_rate: float, device_queue: int, device_in_flight: int,
           max_queued: int, max_batch: int,
           max_delay_ms: float, device_wait_ms: float, deadline_ms: float | None, breaker_failures: int,
           breaker_cooldown: float, metrics_port: int | None, metrics_addr: str, drift_window: int,
           collect_dir: Path | None, collect_max_mb: float) -> None:
    """Serve devices: relay unsure inputs to the remote model and supervise the answers.

    \b
    Serial (--serial): frames are COBS + CRC-16 (firmware_bridge/PROTOCOL.md); a port that goes
    away is reopened with backoff.
    MQTT (--mqtt): devices publish to bisup/v1/<deployment>/<id>/req and get answers on
    bisup/v1/<deployment>/<id>/resp. Workers share $share/<group>/bisup/v1/<deployment>/+/req, so
    more workers (here or on other machines, same --group, different --name) share the load, and
    each deployment on a broker (a rollout's v1 and v2 bundles) answers only its own devices.
    QoS 1 both ways; a request is acked only after its answer is published. A worker that dies
    strands its queued requests for --session-expiry seconds; devices whose retries outlast that
    lose nothing.
    Admission: each device has its own short queue and the devices are served in turn, so a
    flooding device slows only itself; past its rate or queue (or the bound on all queues) a
    request is answered BUSY at once (ERROR 9), and the device answers locally for the time BUSY
    names. Refusals are counted (bisup_busy_total) and each device is named in the log at most
    once per 10 s.
    Both: retried requests are answered from a cache without a second remote call; malformed ones
    get an ERROR reply. Concurrent requests are batched into one remote call; a request past its
    deadline, or any request while the circuit breaker is open, is answered `fallback` at once.
    Stop with Ctrl-C; the counters are printed on exit.
    Drift alarm: the live remote fraction (from the devices' STATS) and how often the remote
    disagrees with the device on relayed inputs are tested against their calibrated rates; leaving
    the band is logged (and exported with --metrics-port).

    \b
    --remote: remote.keras | savedmodel/ | remote.tflite
              oip+http://host:8080/v2/models/<name>       (Open Inference Protocol V2: MLServer,
                                                           KServe, Triton)
              tfserving+http://host:8501/v1/models/<name> (TF Serving REST)
    """
    one_transport(serial_url, mqtt_url)
    from bisup.service import bridge as serve

    options = serve.RemoteOptions(max_batch, max_delay_ms, device_wait_ms, deadline_ms, breaker_failures,
                                  breaker_cooldown)
    monitoring = serve.Monitoring(metrics_port, metrics_addr, drift_window, collect_dir, collect_max_mb)
    handler, guarded = serve.make_handler(bundle_dir, remote, options, json_log, progress, monitoring)
    try:
        if serial_url:
            serve.serve_serial(serial_url, handler, baud, wait, progress)
        else:
            from bisup.firmware_bridge.mqtt_bridge import Routing

            broker = mqtt_broker(mqtt_url, tls_ca, username, password_file)
            limits = serve.Limits(device_rate, device_queue, device_in_flight, max_queued)
            serve.serve_mqtt(broker, handler, workers, threads, group, worker_name, session_expiry, progress,
                             Routing(topic_deployment, legacy_topics), limits)
    finally:
        guarded.close()
        handler.log.close()
    click.echo(json.dumps(dict(handler.counts), sort_keys=True), err=True)  # after serving; not on a failed start


@main.command()
@click.option("--serial", "serial_url", help="Port as a pyserial URL (see `bisup bridge`).")
@mqtt_options
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="A .bisup bundle, or a folder with model.tflite and thresholds.json; or a multi-exit export's "
                   "folder (stages.json, policy.json), which runs the stages and the exit policy.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help=".npz with x (and y for the accuracy).")
@click.option("--device-id", default="virtual-0", show_default=True,
              help="The device's id; over MQTT also its topics bisup/v1/<deployment>/<id>/req|resp.")
@click.option("--timeout-ms", default=500, show_default=True, help="Wait per attempt before resending.")
@click.option("--retries", default=3, show_default=True, help="Resends (same sequence number) before falling back.")
@click.option("--hello-timeout", default=10.0, show_default=True, help="Seconds to wait for the bridge's HELLO.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@trusted
def device(serial_url: str | None, mqtt_url: str | None, tls_ca: Path | None, username: str | None,
           password_file: Path | None, topic_deployment: str | None, bundle_dir: Path, data_path: Path, device_id: str,
           timeout_ms: int, retries: int, hello_timeout: float, as_json: bool) -> None:
    """Be a device without a board: run the bundle's model in TFLM, decide with the int8 threshold,
    and relay unsure inputs to a `bisup bridge` over a serial link (--serial) or MQTT (--mqtt)."""
    one_transport(serial_url, mqtt_url)
    check_exists(bundle_dir, "bundle", "build one with `bisup bundle`, or give the folder `bisup export` wrote")
    check_npz(data_path)
    from bisup.cli.tables import device_table
    from bisup.service import device as virtual

    broker = mqtt_broker(mqtt_url, tls_ca, username, password_file) if mqtt_url else None
    summary = virtual.run(bundle_dir, data_path, serial_url, broker, device_id, timeout_ms, retries, hello_timeout,
                          progress, topic_deployment)
    click.echo(json.dumps(summary) if as_json else device_table(summary))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--port", default=None, type=int, help="Port to listen on [default: 1883, or 8883 with --secure].")
@click.option("--secure", is_flag=True,
              help="TLS with a generated CA, a password per device and an ACL keeping devices apart.")
@click.option("--device", "devices", multiple=True, default=("d1", "d2"), show_default=True,
              help="Device id to create credentials for (repeat the option).")
@click.option("--dir", "workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="State folder: config, log, persistence, CA, server key and passwords [default: "
                   "$XDG_STATE_HOME/bisup/broker, else ~/.local/state/bisup/broker]. Created mode 0700; "
                   "secret files are 0600.")
@click.option("--bundle", default="build/digits.bisup", show_default=True,
              help="Bundle named in the printed bridge and device commands (the README's walk-through).")
@click.option("--remote", default="build/remote.keras", show_default=True,
              help="Remote model named in the printed bridge command.")
@click.option("--data", default="build/test.npz", show_default=True, help="Data named in the printed device commands.")
def broker(port: int | None, secure: bool, devices: tuple[str, ...], workdir: Path | None, bundle: str, remote: str,
           data: str) -> None:
    """Start a local mosquitto with a generated config, for trying the MQTT bridge (Ctrl-C stops it).

    \b
    State (config, log, persistence, keys, passwords) goes to --dir, by default outside the working
    tree (mode 0700, secret files 0600); the first lines say where.
    Plain: anonymous, loopback only. --secure: TLS (CA and server certificate generated into --dir)
    and mosquitto's dynamic-security plugin: a password per device, client id bisup-device-<id>
    bound to it, and deny-by-default rules by which device <id> may only publish
    bisup/v1/+/%u/req and only read bisup/v1/+/%u/resp (any deployment, its own id). The bridge
    user reads every request and
    writes every answer, under a shared-subscription group name that devices are not told
    (pass it to `bisup bridge --group`). Persistence is on, so QoS 1 sessions survive a restart.
    Both set TCP_NODELAY (a QoS 1 round trip on loopback: about 1.3 ms instead of 44 ms).
    It prints complete `bisup bridge` and `bisup device` commands (one per --device) to paste.
    """
    import signal

    from bisup.service.broker import default_state_dir, run_broker

    chosen = port or (8883 if secure else 1883)
    # Before mosquitto starts: `kill` must never orphan it. SIGINT too, explicitly: a shell starts a background
    # job with SIGINT ignored, and Python then installs no KeyboardInterrupt of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with run_broker(workdir or default_state_dir(), chosen, secure, devices) as running:
        for line in running.describe():
            progress(line)
        bridge_command, *device_commands = running.commands(str(bundle), str(remote), str(data))
        progress(f"bridge: {bridge_command}")
        for command in device_commands:
            progress(f"device: {command}")
        try:
            running.process.wait()
        except KeyboardInterrupt:
            pass
