"""Images attached to prompts: checked here, once, before anything is queued.

The CLI takes Anthropic ``image`` content blocks (base64). A bad image is refused with a clear
error instead of failing the turn later: the type must be one the Messages API accepts and must
match the bytes (magic number), and each image is bounded in size. Only a reference (type, size,
SHA-256) goes into the event log; the bytes go to the CLI and live in its transcript.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any, Final

from ..errors import BadRequest, TooLarge
from ..wire import requests as rq
from ..wire.events import ImageRef

MAX_IMAGES: Final = 4  #: per message (4 x 5 MB of base64 fits the 24 MiB body limit)
MAX_IMAGE_BYTES: Final = 3_750_000  #: decoded; 5 MB of base64, the Messages API's own limit
MAGIC: Final = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and b"WEBP" at offset 8, checked below
}


def _matches(media_type: str, data: bytes) -> bool:
    if not any(data.startswith(magic) for magic in MAGIC[media_type]):
        return False
    return media_type != "image/webp" or data[8:12] == b"WEBP"


def prepare(images: Sequence[rq.Image]) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """Validate ``images``; returns their log references and the CLI's content blocks."""
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"at most {MAX_IMAGES} images per message", code="too_many_images")
    refs: list[ImageRef] = []
    blocks: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        where = f"images[{i}]"
        if image.media_type not in MAGIC:
            raise BadRequest(
                f"{where}: media_type {image.media_type!r} is not one of {', '.join(MAGIC)}",
                code="unsupported_image_type",
            )
        if len(image.data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise TooLarge(
                f"{where} is larger than {MAX_IMAGE_BYTES:,} bytes", code="image_too_large"
            )
        try:
            data = base64.b64decode(image.data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: data is not valid base64", code="invalid_image") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise TooLarge(
                f"{where} is {len(data):,} bytes; the limit is {MAX_IMAGE_BYTES:,}",
                code="image_too_large",
            )
        if not _matches(image.media_type, data):
            raise BadRequest(
                f"{where}: the bytes are not a {image.media_type} image", code="invalid_image"
            )
        refs.append(ImageRef(image.media_type, len(data), hashlib.sha256(data).hexdigest()))
        source = {"type": "base64", "media_type": image.media_type, "data": image.data}
        blocks.append({"type": "image", "source": source})
    return refs, blocks
