"""NDJSON framing of the CLI's stdout: split lines, huge lines, garbage lines."""

from __future__ import annotations

import json

from sidecode_trio.claude.framing import LineFramer


def test_frames_split_across_reads_are_joined() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"type":"a","n":') == []
    assert framer.feed(b'1}\n{"type":"b"}\n{"ty') == [{"type": "a", "n": 1}, {"type": "b"}]
    assert framer.feed(b'pe":"c"}\n') == [{"type": "c"}]
    assert framer.skipped == 0


def test_byte_at_a_time_gives_the_same_frames() -> None:
    data = b'{"type":"x","text":"h\xc3\xa9llo"}\n{"type":"y"}\n'
    framer = LineFramer()
    frames = [f for byte in data for f in framer.feed(bytes([byte]))]
    assert frames == [{"type": "x", "text": "héllo"}, {"type": "y"}]


def test_garbage_and_non_object_lines_are_skipped_and_counted() -> None:
    framer = LineFramer()
    data = b'[SandboxDebug] hello\n{"type":"ok"}\n{not json}\n[1,2]\n\n  \n{"type":"ok2"}\n'
    assert framer.feed(data) == [{"type": "ok"}, {"type": "ok2"}]
    assert framer.skipped == 3  # the debug line, the bad JSON and the array


def test_oversize_line_is_dropped_and_the_next_line_survives() -> None:
    framer = LineFramer(max_line=1024)
    huge = json.dumps({"type": "big", "text": "x" * 5000}).encode()
    frames = framer.feed(huge[:3000])
    frames += framer.feed(huge[3000:] + b'\n{"type":"after"}\n')
    assert frames == [{"type": "after"}]
    assert framer.oversize == 1


def test_large_line_under_the_cap_is_kept() -> None:
    framer = LineFramer()
    text = "y" * (5 * 1024 * 1024)
    line = json.dumps({"type": "assistant", "text": text}).encode() + b"\n"
    frames = []
    for start in range(0, len(line), 65536):
        frames += framer.feed(line[start : start + 65536])
    assert len(frames) == 1 and frames[0]["text"] == text


def test_truncated_last_line_at_eof() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"type":"a"}\n{"type":"cut') == [{"type": "a"}]
    assert framer.close() == []
    assert framer.skipped == 1
    framer = LineFramer()
    framer.feed(b'{"type":"whole"}')
    assert framer.close() == [{"type": "whole"}]
