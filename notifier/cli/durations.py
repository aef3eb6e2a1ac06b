"""``bcs-notifier durations``: the learned step durations behind stall alerts."""

from __future__ import annotations

import json
from typing import Any

import click

from notifier.cli.base import Context, main, pass_context, reported


def _seconds(nanoseconds: int | None) -> float | None:
    return None if nanoseconds is None else round(nanoseconds / 1_000_000_000, 3)


@main.command("durations")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key and line.")
@pass_context
def durations(context: Context, as_json: bool) -> None:
    """The learned step durations: key, samples, median, p95, stall threshold."""
    from notifier.channels.render import format_duration
    from notifier.model import operation_type_name
    from notifier.stalls import StallSettings
    from notifier.store import db as store_db
    from notifier.store.durations import duration_table

    config = context.config()
    service = config.service
    settings = StallSettings(
        service.stall_factor,
        service.stall_min_samples,
        service.stall_floor,
        service.stall_reminders,
    )
    with reported(context):
        if not store_db.database_exists(service.database):
            rows = []
        else:
            engine = store_db.make_engine(service.database)
            context.on_close(engine.dispose)
            store_db.require_current(engine)
            rows = duration_table(engine, settings)
    if as_json:
        for row in rows:
            item: dict[str, Any] = {
                "resource_type": row.key.resource_type,
                "operation_type": row.key.operation_type,
                "operation_type_name": operation_type_name(row.key.operation_type),
                "step": row.key.step,
                "substep": row.key.substep or None,
                "samples": row.usual.samples,
                "median_seconds": _seconds(row.usual.median_ns),
                "p95_seconds": _seconds(row.usual.p95_ns),
                "threshold_seconds": _seconds(row.usual.threshold_ns),
            }
            click.echo(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        return
    click.echo(
        f"A step stalls after max(stall_floor = {service.stall_floor:g} s, stall_factor = "
        f"{service.stall_factor:g} x p95) once it has {service.stall_min_samples} samples "
        "(nearest-rank percentiles of the newest 200)."
    )
    if not rows:
        click.echo("No durations learned yet.")
        return

    def span(nanoseconds: int | None) -> str:
        if nanoseconds is None:
            return "-"
        return format_duration(1, 1 + max(nanoseconds, 1)) or "-"

    table = [("resource", "operation", "step / sub-step", "samples", "median", "p95", "threshold")]
    for row in rows:
        key = row.key
        name = f"{key.step} › {key.substep}" if key.substep else key.step
        threshold = span(row.usual.threshold_ns)
        if row.usual.threshold_ns is None:
            threshold = f"- (needs {service.stall_min_samples})"
        table.append(
            (
                key.resource_type,
                f"{key.operation_type} {operation_type_name(key.operation_type)}",
                name,
                str(row.usual.samples),
                span(row.usual.median_ns),
                span(row.usual.p95_ns),
                threshold,
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        cells = [
            cell.rjust(width) if column in (3, 4, 5) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())
