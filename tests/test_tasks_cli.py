"""Task subcommands end to end: argparse wiring, replayed replies (no model), files written and read back."""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl.tasks import cli

FIX = Path(__file__).parent / "fixtures" / "tasks"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qwen3vl")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_every_command_mounts():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parsers(sub)
    assert set(sub.choices) == {"ground", "ground3d", "document", "ocr", "clip", "captions", "agent", "eval"}


def test_ground_prints_pixels_and_writes_annotated_image(tmp_path, capsys):
    img = tmp_path / "street.png"
    Image.new("RGB", (333, 997), (90, 90, 90)).save(img)
    out = tmp_path / "ann.png"
    reply = '```json\n[{"bbox_2d": [74, 361, 324, 808], "label": "red car"}]\n```'
    assert run(["ground", "red car", "--image", str(img), "--response", reply, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == [{"label": "red car", "bbox": [24.64, 359.92, 107.89, 805.58]}]
    assert printed["prompt"].startswith('Locate every object that matches the description "red car"')
    ann = Image.open(out)
    assert ann.size == (333, 997)
    assert ann.getpixel((25, 583)) != (90, 90, 90) and ann.getpixel((66, 583)) == (90, 90, 90)


def test_ground_without_a_model_is_an_input_error(tmp_path, capsys, monkeypatch):
    import qwen3vl.commands

    monkeypatch.setattr(qwen3vl.commands, "DEMO_MODEL", tmp_path / "no-demo-here")
    img = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(img)
    assert run(["ground", "car", "--image", str(img)]) == 2
    assert "--model" in capsys.readouterr().err


def test_ground3d_with_fov_camera(tmp_path, capsys):
    img = tmp_path / "room.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(img)
    reply = '[{"bbox_3d": [0, 0, 3, 1, 1, 1, 0, 0, 0], "label": "box"}]'
    assert run(["ground3d", "box", "--image", str(img), "--response", reply, "--out", str(tmp_path / "o.png")]) == 0
    printed = json.loads(capsys.readouterr().out)
    # fx = 640 / (2 tan 30deg) = 554.256; corner (+0.5, +0.5, +0.5) at Z = 3.5 -> u = 554.256 * 0.5 / 3.5 + 320
    assert printed["items"][0]["corners_px"][0][0] == pytest.approx(554.256 * 0.5 / 3.5 + 320, abs=0.01)


def test_document_pdf_pages(tmp_path, capsys):
    pdf = tmp_path / "doc.pdf"
    pages = [Image.new("RGB", (600, 800), c) for c in ((255, 255, 255), (250, 250, 250))]
    pages[0].save(pdf, save_all=True, append_images=pages[1:], resolution=72.0)
    reply = (FIX / "qwenvl_html_page.txt").read_text()
    out = tmp_path / "parsed"
    assert run(["document", str(pdf), "--out-dir", str(out), "--response", reply, "--max-pixels", "200000"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [p["elements"] for p in summary["pages"]] == [11, 11]
    assert "data-bbox" not in (out / "page_001.html").read_text()
    w, h = Image.open(out / "page_000.png").size
    assert w * h <= 200_000


def test_ocr(tmp_path, capsys):
    img = tmp_path / "sign.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(img)
    assert run(["ocr", str(img), "--response", f"@{FIX / 'ocr_spotting.txt'}", "--out", str(tmp_path / "o.png")]) == 0
    spots = json.loads(capsys.readouterr().out)["spots"]
    assert spots[0] == {"text": "GRAND OPENING", "bbox": [33.28, 19.68, 390.4, 47.04]}


def make_video(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(40):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 6 * i, np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_clip_and_captions(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    make_video(video)
    out = tmp_path / "moment.mp4"
    assert run(["clip", str(video), "the bright part", "--response", "It happens from 00:01.00 to 00:02.00.",
                "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["clip"]["frames"] == 10 and out.is_file()
    assert run(["clip", str(video), "x", "--response", "I do not know."]) == 1
    srt, vtt = tmp_path / "c.srt", tmp_path / "c.vtt"
    assert run(["captions", str(video), "--response", f"@{FIX / 'dense_captions_cookbook.txt'}",
                "--srt", str(srt), "--vtt", str(vtt)]) == 0
    assert srt.read_text().startswith("1\n00:00:23,000 --> 00:00:48,000\ntrim the fat")
    assert vtt.read_text().startswith("WEBVTT\n\n00:00:23.000 --> 00:00:48.000\n")


def test_agent_with_a_script(tmp_path, capsys):
    from qwen3vl.tasks.agent.browser import find_chromium

    try:
        find_chromium()
    except FileNotFoundError as e:
        pytest.fail(f"Chromium is required: apt-get install -y chromium ({e})")
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"action": "left_click", "coordinate": [312, 200]},
                                  {"action": "type", "text": "Ada"},
                                  {"action": "left_click", "coordinate": [250, 383]},
                                  {"action": "terminate", "status": "success"}]))
    code = run(["agent", "Say hello to Ada", "--url", (FIX / "agent_form.html").as_uri(), "--script", str(script),
                "--viewport", "800x600", "--log-dir", str(tmp_path / "log")])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["status"] == "success"
    assert len((tmp_path / "log" / "actions.jsonl").read_text().splitlines()) == 4


def test_eval_against_an_endpoint(tmp_path, capsys):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "B"},
                                            "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        data = tmp_path / "mc.jsonl"
        data.write_text('{"task": "mc", "question": "q1", "answer": "B"}\n{"task": "mc", "question": "q2", "answer": "C"}\n')
        code = run(["eval", str(data), "--endpoint", f"http://127.0.0.1:{httpd.server_address[1]}",
                    "--out", str(tmp_path / "r.jsonl"), "--no-progress"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0
    assert "mc    2  accuracy  50.00" in capsys.readouterr().out
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2
