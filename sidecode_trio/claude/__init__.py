"""The Claude Code CLI driver: framing, messages, frame->event translation, process lifetime."""
