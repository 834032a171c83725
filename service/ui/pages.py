"""The HTML pages the /ui routes answer: dashboard, login form, and the fold report of a served model."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import HTMLResponse

from bnfold.service.errors import NotReadyError
from bnfold.service.model import ServedModel
from bnfold.service.repository import EntryError, read_manifest
from bnfold.service.ui.calibration import agreement_rows
from bnfold.service.ui.report_page import report_page
from bnfold.service.ui.summary import POLL_MS
from bnfold.service.ui.templates import asset, escape, render


def dashboard_page(key_required: bool) -> str:
    logout = '<form method="post" action="/ui/logout"><button>Log out</button></form>' if key_required else ""
    return render(
        "dashboard.html",
        style=asset("dashboard.css"),
        script=asset("dashboard.js") + asset("try_it.js"),
        poll_ms=str(POLL_MS),
        logout=logout,
    )


def login_page(next_path: str, message: str, status: int) -> HTMLResponse:
    page = render(
        "login.html", style=asset("dashboard.css"), next=escape(next_path), message=escape(message) if message else ""
    )
    return HTMLResponse(page, status_code=status)


def served_report_page(model: ServedModel, directory: Path) -> str:
    """The fold report of a served model, with the calibration agreement its load-time gate measured.

    A model refused at load still shows its report when its model.json can be read (a replaced ONNX file
    does not make the manifest unreadable); the calibration section then says why it was not measured.
    """
    if model.manifest is not None:
        manifest = model.manifest
    else:
        try:
            manifest = read_manifest(directory)
        except EntryError as error:
            raise NotReadyError(f"model {model.name!r} has no fold report to show: {error}") from None
    tolerance = manifest.tolerance
    if model.calibration is not None:
        rows = agreement_rows(model.calibration, tolerance.atol, tolerance.rtol)
        batch = manifest.calibration.batch_size
        source = f"measured by the service at load time on calibration.npz ({batch or 'all'} samples)"
        return report_page(manifest.model_dump(), rows, source)
    state = "still loading" if model.state == "loading" else f"{model.state}: {model.reason}"
    return report_page(manifest.model_dump(), None, f"not measured — the model is {state}")
