"""Responsiveness of the napari widget, under Xvfb on 2 cores, as a new user meets it.

Each scenario runs in a fresh Python process (torch not yet imported), with a
10 ms QTimer on the GUI thread; a gap between its ticks is a stall of the window.

* ``open``: napari with the stardist nuclei (real, 512x512); the widget opens and
  gets ready in the background (imports torch & co., loads LiteMedSAM and the
  bundled agent). Longest stall from the moment the widget is shown.
* ``first-run-at-once``: the widget opens and Run is pressed immediately, before
  it is ready: the first run of the session pays for the imports and loading.
* ``first-run-after-ready``: the person types a query first (the widget is ready
  by then), then presses Run.
* ``steady``: a second run on another slice (LiteMedSAM embeds anew; the agent's
  replies are generated as usual).

Each run: the bundled agent (empty model field), LiteMedSAM, "segment the
nucleus", at most 3 steps. Reported: the longest GUI stall from pressing Run to
the end, the time to the first feedback (status text) and to the first streamed
model text and first mask, and the run's length.

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/widget_responsiveness.py
Writes benchmarks/results/widget_responsiveness.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCENARIOS = ("open", "first-run-at-once", "first-run-after-ready", "steady")


def scenario(name: str) -> dict:
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from stardist.data import test_image_nuclei_2d

    image = test_image_nuclei_2d()
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.stack([image, image[::-1].copy()]), name="nuclei")
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def wait(condition, seconds=600):
        end = time.time() + seconds
        while not condition() and time.time() < end:
            app.processEvents()
            time.sleep(0.001)

    def settle(seconds):
        wait(lambda: False, seconds)

    settle(1.0)
    from napari_ibis._widget import IbisWidget

    timer.start()
    opened = time.perf_counter()
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run_panel.model_edit.setText("")
    widget.run_panel.segmenter_combo.setCurrentText("litemedsam")
    widget.run_panel.query_edit.setText("segment the nucleus")
    widget.run_panel.max_steps.setValue(3)
    result: dict = {"scenario": name}
    if name == "open":
        wait(lambda: widget.ready)
        result["ready_after_s"] = time.perf_counter() - opened
        gaps = np.diff(ticks) * 1000
        result["largest_gui_stall_ms"] = float(gaps.max())
        result["stalls_over_100ms"] = int((gaps > 100).sum())
        viewer.close()
        return result
    if name != "first-run-at-once":
        wait(lambda: widget.ready)
    if name == "steady":
        viewer.dims.set_current_step(0, 1)
        widget.run()
        wait(lambda: not widget.running)
        viewer.dims.set_current_step(0, 0)
    marks: dict[str, float] = {}
    status = widget.steps_panel.status
    handler = widget.controller.handle

    def spy(item):
        kind, value = item
        if kind == "event" and type(value).__name__ == "ThoughtDelta" and value.text.strip():
            marks.setdefault("text", time.perf_counter())
        if kind == "event" and type(value).__name__ == "MaskUpdated":
            marks.setdefault("mask", time.perf_counter())
        handler(item)

    widget.controller.handle = spy
    ticks.clear()
    pressed = time.perf_counter()
    widget.run_panel.run_button.click()
    if status.text():  # the status says what is happening before Run returns
        marks["feedback"] = time.perf_counter()
    wait(lambda: not widget.running)
    ended = time.perf_counter()
    settle(0.3)
    timer.stop()
    times = np.array([pressed] + [t for t in ticks if t >= pressed])
    gaps = np.diff(times) * 1000
    result.update({
        "largest_gui_stall_ms": float(gaps.max()),
        "stalls_over_100ms": int((gaps > 100).sum()),
        "largest_stall_at_s": float(times[int(np.argmax(gaps))] - pressed),
        "run_to_feedback_s": marks["feedback"] - pressed if "feedback" in marks else None,
        "run_to_first_text_s": marks["text"] - pressed if "text" in marks else None,
        "run_to_first_mask_s": marks["mask"] - pressed if "mask" in marks else None,
        "run_seconds": ended - pressed,
        "steps": len(widget.controller.session.steps) if widget.controller.session else 0,
        "status": widget.steps_panel.status.text(),
    })
    viewer.close()
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--scenario":
        print("RESULT " + json.dumps(scenario(sys.argv[2])))
        return
    results = {}
    for name in SCENARIOS:
        done = subprocess.run([sys.executable, __file__, "--scenario", name], capture_output=True, text=True, timeout=900)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(json.dumps(results[name], indent=2), flush=True)
    out = ROOT / "benchmarks" / "results" / "widget_responsiveness.json"
    out.write_text(json.dumps({"machine": "2 cores, Xvfb + Mesa llvmpipe", "image": "stardist nuclei 512x512 (real)",
                               "agent": "bundled default agent, LiteMedSAM, at most 3 steps", **results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
