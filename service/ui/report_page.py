"""The fold report of one repository entry as a self-contained HTML page (no network, no script).

`report_page(manifest, calibration)` is a pure function of model.json (docs/repository-format.md) and the
calibration agreement per output (rows of `calibration.agreement_rows`, or None when not measured). The
service serves it at /ui/models/{m}/report; `bnfold inspect ENTRY --html OUT.html` writes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.service.ui.error_chart import error_chart
from bnfold.service.ui.templates import asset, escape, number, render

FATES = {
    "folded_into_previous": "folded into previous",
    "folded_into_next": "folded into next",
    "lowered_to_scale_shift": "lowered to scale/shift",
    "kept": "kept",
}

Row = Mapping[str, Any]


def report_page(manifest: Mapping[str, Any], calibration: Sequence[Row] | None, calibration_source: str) -> str:
    """The HTML page; `calibration_source` says where the agreement figures come from."""
    report = manifest.get("fold_report") or {"entries": [], "summary": "no fold report"}
    entries = report.get("entries", [])
    tolerance = manifest["tolerance"]
    return render(
        "report.html",
        title=escape(f"{manifest['name']} — fold report"),
        style=asset("report.css"),
        name=escape(manifest["name"]),
        summary_line=escape(report.get("summary", "")),
        cards=_cards(manifest, entries),
        calibration=_calibration_table(calibration, calibration_source),
        chart=error_chart(entries, tolerance["atol"], report.get("max_output_error")),
        bn_table=_bn_table(entries, tolerance["atol"]),
        notes="".join(f"<li>{escape(note)}</li>" for note in manifest.get("notes") or []),
        provenance=_provenance(manifest.get("provenance") or {}),
    )


def fate_counts(entries: Sequence[Row]) -> dict[str, int]:
    """BatchNorms folded (either direction), lowered to scale/shift, and kept."""
    actions = Counter(entry.get("action") for entry in entries)
    folded = actions["folded_into_previous"] + actions["folded_into_next"]
    return {"folded": folded, "lowered": actions["lowered_to_scale_shift"], "kept": actions["kept"]}


def _cards(manifest: Mapping[str, Any], entries: Sequence[Row]) -> str:
    counts = fate_counts(entries)
    variants = manifest["variants"]
    tolerance = manifest["tolerance"]
    figures = [
        ("source", escape((manifest.get("provenance") or {}).get("source", "—"))),
        ("task", escape(manifest.get("task"))),
        ("BatchNorm folded / lowered / kept", f"{counts['folded']} / {counts['lowered']} / {counts['kept']}"),
        (
            "BatchNormalization nodes",
            f"{variants['unfolded']['batchnorm_nodes']} → {variants['folded']['batchnorm_nodes']}",
        ),
        ("tolerance", f"atol {tolerance['atol']:g} + rtol {tolerance['rtol']:g}·max|u|"),
        ("end-to-end max |Δ|", number((manifest.get("fold_report") or {}).get("max_output_error"))),
    ]
    figures += [(escape(key), escape(value)) for key, value in (manifest.get("metrics") or {}).items()]
    return "".join(
        f'<div class="card" data-figure="{label}"><span class="label">{label}</span>'
        f'<span class="value">{value}</span></div>'
        for label, value in figures
    )


def _calibration_table(rows: Sequence[Row] | None, source: str) -> str:
    if rows is None:
        return f'<p class="muted">{escape(source)}</p>'
    body = "".join(
        f'<tr class="{"ok" if row["within"] else "bad"}"><td>{escape(row["output"])}</td>'
        f"<td>{number(row['max_abs'])}</td><td>{number(row['max_rel'])}</td><td>{number(row['bound'])}</td>"
        f"<td>{'yes' if row['within'] else 'NO'}</td><td>{_yes_no(row['argmax_agree'])}</td></tr>"
        for row in rows
    )
    head = "<tr><th>output</th><th>max |Δ|</th><th>relative</th><th>bound</th><th>within</th><th>arg-max</th></tr>"
    return f'<p class="muted">{escape(source)}</p><table class="calibration">{head}{body}</table>'


def _yes_no(flag: bool | None) -> str:
    return "—" if flag is None else "agrees" if flag else "DIFFERS"


def _bn_table(entries: Sequence[Row], atol: float) -> str:
    head = "<tr><th>#</th><th>BatchNorm</th><th>fate</th><th>target</th><th>reason</th><th>max |Δ|</th></tr>"
    rows = []
    for index, entry in enumerate(entries, start=1):
        action = str(entry.get("action"))
        error = entry.get("max_error")
        over = ' class="over"' if error is not None and error > atol else ""
        rows.append(
            f'<tr class="bn-row action-{escape(action)}"><td>{index}</td>'
            f"<td><code>{escape(entry.get('bn'))}</code></td>"
            f"<td>{escape(FATES.get(action, action))}</td><td><code>{escape(entry.get('target') or '—')}</code></td>"
            f"<td>{escape(entry.get('reason') or '—')}</td><td{over}>{number(error)}</td></tr>"
        )
    return f'<table class="bn-table">{head}{"".join(rows)}</table>'


def _provenance(provenance: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{escape(k)} {escape(v)}" for k, v in (provenance.get("versions") or {}).items())
    items = [
        ("source", provenance.get("source")),
        ("weights sha256", provenance.get("weights_sha256") or "none (no weights file)"),
        ("created", provenance.get("created")),
    ]
    listed = "".join(f"<dt>{label}</dt><dd><code>{escape(value)}</code></dd>" for label, value in items)
    return f"{listed}<dt>versions</dt><dd>{versions or '—'}</dd>"
