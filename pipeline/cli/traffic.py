"""Traffic commands: `pipeline simulate` (a synthetic fleet) and `pipeline replay` (recordings, Twizy trips)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)  # progress bars
report = Console()  # summaries

TWIZY_HELP = ('Replay the recorded Renault Twizy trips of the "RSK Twizy EV Dataset" '
              "(Youssef Nait Malek et al., CC BY 4.0) instead of a recording.")


def _progress(total: float | None) -> Progress:
    """Frames, readings and achieved rates as they go (on stderr, summaries go to stdout)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%" if total else ""),
        TextColumn("{task.fields[frames]:>10,} frames"),
        TextColumn("{task.fields[readings]:>13,} readings"),
        TextColumn("{task.fields[rate]:>11,.0f} readings/s"),
        TextColumn("{task.fields[frate]:>8,.0f} frames/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        refresh_per_second=5,
    )


def _quiet_clients() -> None:
    """Topic auto-creation makes aiokafka log "topic not found" once per new topic; keep real errors."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)


def _parse_speed(text: str) -> float | None:
    if text.strip().lower() in ("max", "inf", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise typer.BadParameter("speed must be positive or 'max'")
    return value


# Options that simulate and replay share (both produce frames to the ingest topics).
SensorTopic = Annotated[str | None, typer.Option(help="Sensor topic (default from settings).")]
GpsTopic = Annotated[str | None, typer.Option(help="GPS topic (default from settings).")]
LingerMs = Annotated[int, typer.Option(help="Producer linger.ms.")]
BatchBytes = Annotated[int, typer.Option(help="Producer max batch size in bytes.")]
Compression = Annotated[str, typer.Option(help="none, gzip, lz4, snappy or zstd (the last three need cramjam).")]
Acks = Annotated[str, typer.Option(help="Producer acks: 0, 1 or all.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


@dataclass(frozen=True, slots=True)
class Producing:
    """Where and how `simulate` and `replay` produce frames: the options both take (each
    field's type and default are its command-line option's)."""

    sensor_topic: SensorTopic = None
    gps_topic: GpsTopic = None
    linger_ms: LingerMs = 20
    batch_bytes: BatchBytes = 1 << 20
    compression: Compression = "none"
    acks: Acks = "1"
    as_json: AsJson = False

    def settings(self) -> Any:
        """The settings, with the topics given on the command line."""
        from pipeline.runtime.settings import get_settings

        settings = get_settings()
        update = {k: v for k, v in (("topic_sensor", self.sensor_topic), ("topic_gps", self.gps_topic)) if v}
        return settings.model_copy(update=update) if update else settings

    def options(self) -> Any:
        """The producer's options."""
        from pipeline.tools.replay import ProducerOptions

        return ProducerOptions(linger_ms=self.linger_ms, max_batch_bytes=self.batch_bytes,
                               compression=None if self.compression == "none" else self.compression,
                               acks=self.acks if self.acks == "all" else int(self.acks))


def producing(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the options of `Producing` (after its own), passed as its `produce`."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "produce"]
    kinds = get_type_hints(Producing, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=kinds[f.name])
              for f in fields(Producing)]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        produce = Producing(**{f.name: kwargs.pop(f.name) for f in fields(Producing)})
        command(produce=produce, **kwargs)

    run.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    return run


def _summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @producing
    def simulate(
        vehicles: int = typer.Option(1000, min=1, help="Fleet size."),
        duration: float = typer.Option(600.0, min=1, help="Simulated seconds."),
        seed: int = typer.Option(7, help="Random seed: the same seed gives the same bytes."),
        start: str = typer.Option(None, help="Simulated start, ISO 8601 (default 2024-05-14T07:30:00+01:00)."),
        ev_share: float = typer.Option(0.6, min=0.0, max=1.0, help="Share of electric vehicles."),
        frame_seconds: int = typer.Option(5, min=1, help="Seconds of samples per uploaded frame."),
        fault_rate: list[str] = typer.Option(
            None, help="Fault rates `name=rate,...` on top of the defaults (repeatable; `none` turns "
                       "all off first). Names: spike, stuck, dropout, nan, out_of_range, wrong_unit, "
                       "unknown_unit, gps_jump, teleport, null_island, unknown_signal, clock_skew, "
                       "duplicate, out_of_order, late, bad_json, missing_field, wrong_type, oversized."),
        no_faults: bool = typer.Option(False, help="Inject no faults at all."),
        city: str = typer.Option("rabat", help="City the road network is laid around."),
        out: Path = typer.Option(None, help="Write a recording here (and FILE.truth.parquet beside it)."),
        to: str = typer.Option("file", help="Output: file (needs --out) or kafka."),
        truth: Path = typer.Option(None, help="With --to kafka: also write the truth file here."),
        rate: float = typer.Option(None, help="Target readings per second when producing (default: as fast as possible)."),
        frames_per_second: float = typer.Option(None, help="Target frames per second when producing."),
        region: str = typer.Option(None, help="With --to kafka: send only the vehicles homed in this region, "
                                   "to its brokers (regions file: $REGIONS_FILE; see README Regions)."),
        *,
        produce: Producing,
    ) -> None:
        """Simulate a fleet (EVs and combustion cars around a city) with injected faults.

        Writes a recording plus its ground-truth file, or produces to Kafka (frames keyed
        by VIN, record timestamp = sent_at, plus latency for late frames).
        """
        from pipeline.core.errors import InputError
        from pipeline.tools.sim.faults import parse_fault_rates
        from pipeline.tools.simulate import (
            DEFAULT_START,
            FleetSimulator,
            SimConfig,
            simulate_to_recording,
        )

        if to not in ("file", "kafka"):
            raise typer.BadParameter("--to must be file or kafka")
        if to == "file" and out is None:
            raise typer.BadParameter("give --out FILE (or --to kafka)")
        if region and to != "kafka":
            raise typer.BadParameter("--region goes with --to kafka; a recording holds the whole fleet "
                                     "(replay it with `pipeline replay FILE --region R`)")
        spec = "none" if no_faults else ",".join(fault_rate or [])
        try:
            rates = parse_fault_rates(spec)
        except InputError as exc:
            raise typer.BadParameter(str(exc)) from exc
        settings = produce.settings()
        settings, keep = _home_region(settings, region)
        _quiet_clients()
        try:
            config = SimConfig(vehicles=vehicles, duration_s=duration, seed=seed, start=start or DEFAULT_START,
                               ev_share=ev_share, frame_seconds=frame_seconds, fault_rates=rates, city=city,
                               sensor_topic=settings.topic_sensor, gps_topic=settings.topic_gps,
                               max_frame_bytes=settings.max_frame_bytes)
        except InputError as exc:
            raise typer.BadParameter(str(exc)) from exc
        began = time.monotonic()
        with _progress(duration) as progress:
            task = progress.add_task("simulate", total=duration, frames=0, readings=0, rate=0.0, frate=0.0)

            def tick(sim: FleetSimulator) -> None:
                el = max(time.monotonic() - began, 1e-9)
                progress.update(task, completed=sim.stats.sim_ms / 1000.0, frames=sim.stats.total_frames,
                                readings=sim.stats.readings, rate=sim.stats.readings / el,
                                frate=sim.stats.total_frames / el)

            if to == "file":
                summary = simulate_to_recording(config, out, progress=tick)
            else:
                summary = _simulate_to_kafka(config, settings, truth, rate, frames_per_second,
                                             produce.options(), tick, keep)
                if region:
                    summary["region"] = region
        elapsed = time.monotonic() - began
        summary["elapsed_s"] = round(elapsed, 3)
        summary["readings_per_s"] = round(summary["readings"] / max(elapsed, 1e-9))
        _print_simulation(summary, produce.as_json)

    @app.command()
    @producing
    def replay(
        file: Path = typer.Argument(None, help="Recording to replay (from `pipeline simulate --out`)."),
        twizy: bool = typer.Option(False, "--twizy", help=TWIZY_HELP),
        twizy_dir: Path = typer.Option(None, help="Twizy CSV folder (default $TWIZY_DIR or <repo>/../shared/data/twizy)."),
        mapping: Path = typer.Option(None, help="Column mapping (default rules/replay/twizy.yaml)."),
        vehicles: int = typer.Option(1, min=1, help="Twizy: derived vehicles (time-shifted, re-keyed copies)."),
        frame_seconds: float = typer.Option(5.0, min=1.0, help="Twizy: seconds of rows per frame."),
        speed: str = typer.Option("1", help="Speed factor over recorded time (1, 10, ...) or 'max'."),
        max_gap: float = typer.Option(10.0, min=0.0, help="Longest pause kept, in recorded seconds (gaps between trips are cut to this)."),
        rate: float = typer.Option(None, help="Cap in readings per second."),
        frames_per_second: float = typer.Option(None, help="Cap in frames per second."),
        out: Path = typer.Option(None, help="Write a recording instead of producing to Kafka."),
        region: str = typer.Option(None, help="Send only the vehicles homed in this region, to its "
                                   "brokers (regions file: $REGIONS_FILE; see README Regions)."),
        *,
        produce: Producing,
    ) -> None:
        """Replay a recording, or the recorded Twizy EV trips, into the ingest topics.

        Keeps relative timing at --speed (record timestamps stay as recorded); Twizy data:
        "RSK Twizy EV Dataset", Youssef Nait Malek et al., CC BY 4.0.
        """
        if twizy == (file is not None):
            raise typer.BadParameter("give a recording FILE or --twizy (not both)")
        settings = produce.settings()
        _quiet_clients()
        from pipeline.tools.replay import Pacer

        pacer = Pacer(speed=_parse_speed(speed), max_gap_s=max_gap, readings_per_s=rate,
                      frames_per_s=frames_per_second)
        options = produce.options()
        settings, keep = _home_region(settings, region)
        if twizy:
            summary = _replay_twizy(settings, twizy_dir, mapping, vehicles, frame_seconds, pacer, options, out,
                                    keep=keep)
        else:
            summary = _replay_recording(settings, file, pacer, options, out, keep=keep)
        if region:
            summary["region"] = region
        _print_replay(summary, produce.as_json)


# --- runners ------------------------------------------------------------------------------------


def _home_region(settings: Any, region: str | None) -> tuple[Any, Any]:
    """Settings pointed at `region`'s brokers and a filter keeping the records of vehicles
    homed there (by key = VIN); unchanged settings and no filter without a region."""
    if not region:
        return settings, None
    from pipeline.tools.regions import load

    regions = load()
    if region not in regions.regions:
        raise typer.BadParameter(f"unknown region {region!r}; known: {regions.names}")

    def keep(item: tuple[Any, int]) -> bool:
        return regions.home_of((item[0].key or b"").decode()) == region

    return settings.model_copy(update={"kafka_bootstrap": regions.regions[region].kafka_bootstrap}), keep


def _simulate_to_kafka(config: Any, settings: Any, truth_file: Path | None, rate: float | None,
                       frames_per_second: float | None, options: Any, tick: Any, keep: Any = None) -> dict[str, Any]:
    from pipeline.tools.replay import Pacer, produce
    from pipeline.tools.sim.truth import TruthWriter
    from pipeline.tools.simulate import FleetSimulator

    sim = FleetSimulator(config)
    topics = {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
    writer = TruthWriter(truth_file) if truth_file else None

    def items() -> Iterator[tuple[Any, int]]:
        for records, rows in sim.record_windows(topics):
            if writer is not None:
                writer.write(rows)
            tick(sim)
            yield from (records if keep is None else (item for item in records if keep(item)))

    try:
        stats = asyncio.run(produce(items(), settings, options=options,
                                    pacer=Pacer(readings_per_s=rate, frames_per_s=frames_per_second)))
    finally:
        summary = sim.summary()
        if writer is not None:
            writer.close(summary)
    summary["kafka"] = {"bootstrap": settings.kafka_bootstrap, "topics": dict(stats.by_topic),
                        "produce_s": round(stats.elapsed_s, 3)}
    if truth_file:
        summary["truth"] = str(truth_file)
    return summary


def _run_items(items: Iterator[tuple[Any, int]], settings: Any, pacer: Any, options: Any, out: Path | None,
               total: float | None, advance: Any, description: str, metadata: dict[str, Any],
               keep: Any = None) -> dict[str, Any]:
    from pipeline.tools.recording import RecordingWriter
    from pipeline.tools.replay import ProduceStats, produce

    if keep is not None:
        items = (item for item in items if keep(item))

    with _progress(total) as progress:
        task = progress.add_task(description, total=total, frames=0, readings=0, rate=0.0, frate=0.0)

        def show(stats: ProduceStats) -> None:
            fps, rps = stats.rates()
            progress.update(task, completed=advance(), frames=stats.frames, readings=stats.readings,
                            rate=rps, frate=fps)

        stats = ProduceStats()
        interrupted = False
        try:
            if out is None:
                asyncio.run(produce(items, settings, pacer=pacer, options=options, on_progress=show, stats=stats))
            else:
                last = 0.0
                with RecordingWriter(out, metadata) as writer:
                    for record, readings in items:
                        writer.write(record)
                        stats.frames += 1
                        stats.readings += readings
                        stats.bytes += len(record.value or b"")
                        stats.by_topic[record.topic] += 1
                        now = time.monotonic()
                        if now - last > 0.2:
                            last = now
                            show(stats)
        except KeyboardInterrupt:
            interrupted = True  # report what was sent so far
        stats.finished = time.monotonic()
        show(stats)
    fps, rps = stats.rates()
    summary = {"frames": stats.frames, "readings": stats.readings, "bytes": stats.bytes,
               "topics": dict(stats.by_topic), "elapsed_s": round(stats.elapsed_s, 3),
               "frames_per_s": round(fps), "readings_per_s": round(rps),
               "destination": str(out) if out else settings.kafka_bootstrap}
    if interrupted:
        summary["interrupted"] = True
    return summary


def _replay_recording(settings: Any, file: Path, pacer: Any, options: Any, out: Path | None,
                      keep: Any = None) -> dict[str, Any]:
    from pipeline.tools.recording import RecordingReader
    from pipeline.tools.replay import recording_items

    reader = RecordingReader(file)
    summary = _run_items(recording_items(reader, settings), settings, pacer, options, out,
                         float(reader.size), lambda: float(reader.bytes_read), f"replay {file.name}",
                         {**reader.metadata, "replayed_from": str(file)}, keep)
    summary["source"] = str(file)
    return summary


def _replay_twizy(settings: Any, twizy_dir: Path | None, mapping_path: Path | None, vehicles: int,
                  frame_seconds: float, pacer: Any, options: Any, out: Path | None, keep: Any = None
                  ) -> dict[str, Any]:
    from pipeline.tools.replay import (
        TWIZY_CREDIT,
        default_twizy_dir,
        load_mapping,
        load_trips,
        twizy_items,
        twizy_totals,
    )

    mapping = load_mapping(mapping_path)
    folder = twizy_dir or default_twizy_dir()
    trips = load_trips(folder, mapping)
    totals = twizy_totals(trips)
    expected = 0
    for trip in trips:
        windows = len(set((trip.t_ms // int(frame_seconds * 1000)).tolist()))
        expected += 2 * windows
    expected *= vehicles
    sent = [0]

    def counted() -> Iterator[tuple[Any, int]]:
        for item in twizy_items(trips, mapping, vehicles=vehicles, frame_seconds=frame_seconds, settings=settings):
            sent[0] += 1
            yield item

    topics = {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
    summary = _run_items(counted(), settings, pacer, options, out, float(expected), lambda: float(sent[0]),
                         "replay twizy", {"created_by": "pipeline replay --twizy", "topics": topics,
                                          "credit": TWIZY_CREDIT}, keep)
    summary["source"] = str(folder)
    summary["trips"] = len(trips)
    summary["vehicles"] = vehicles
    summary["rows"] = dict(sorted(totals.items()))
    summary["credit"] = TWIZY_CREDIT
    return summary


# --- output -------------------------------------------------------------------------------------


def _print_simulation(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    cfg = summary["config"]
    rows: list[tuple[str, Any]] = [
        ("vehicles", f"{summary['vins']:,} ({summary['ev']:,} EV)"),
        ("simulated", f"{summary['sim_seconds']:,.0f} s from {cfg['start']}"),
        ("frames sensor / gps", f"{summary['frames']['sensor']:,} / {summary['frames']['gps']:,}"),
        ("readings", summary["readings"]),
        ("elapsed", f"{summary['elapsed_s']:.2f} s"),
        ("readings/s", summary["readings_per_s"]),
    ]
    for key in ("recording", "truth"):
        if key in summary:
            rows.append((key, summary[key]))
    if "kafka" in summary:
        rows.append(("kafka", f"{summary['kafka']['bootstrap']} {summary['kafka']['topics']}"))
    report.print(_summary_table("simulation", rows))
    faults = Table("fault", "level", "rate", "injected", "of", "achieved", title="injected faults")
    for name, f in summary["faults"].items():
        if f["rate"] or f["injected"]:
            faults.add_row(name, f["level"], f"{f['rate']:g}", f"{f['injected']:,}",
                           f"{f['opportunities']:,} {f['unit']}", f"{f['achieved']:.2g}")
    report.print(faults)


def _print_replay(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    rows: list[tuple[str, Any]] = [
        ("source", summary.get("source", "") + (" (interrupted)" if summary.get("interrupted") else "")),
        ("destination", summary["destination"]),
        ("frames", summary["frames"]),
        ("readings", summary["readings"]),
        ("by topic", ", ".join(f"{k}: {v:,}" for k, v in summary["topics"].items())),
        ("elapsed", f"{summary['elapsed_s']:.2f} s"),
        ("frames/s", summary["frames_per_s"]),
        ("readings/s", summary["readings_per_s"]),
    ]
    if "rows" in summary:
        rows.append(("trips / vehicles", f"{summary['trips']} / {summary['vehicles']}"))
        for key, value in summary["rows"].items():
            rows.append(("rows read" if key == "rows" else f"rows {key}", value))
        rows.append(("data", summary["credit"]))
    report.print(_summary_table("replay", rows))
