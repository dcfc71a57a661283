"""How long an MPEG audio or ADTS AAC frame says it is.

Raw audio files (MP3, ADTS AAC) declare no length of their own; each frame's
header does.  FFmpeg hands a frame cut by the end of the file to the decoder,
which often decodes it without complaint, so the last packet is checked
against its own header: shorter than it says means the file was cut.
"""

from __future__ import annotations

_MP3_KBPS = {  # (MPEG-1?, layer) -> bitrate index 0..14
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_audio_frame_length(head: bytes) -> int | None:
    """Bytes of the MPEG audio frame whose 4-byte header is ``head`` (None: not a header)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version = (head[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = 4 - ((head[1] >> 1) & 3)  # 4 means reserved
    rate_index, sr_index = head[2] >> 4, (head[2] >> 2) & 3
    if version == 1 or layer == 4 or rate_index in (0, 15) or sr_index == 3:
        return None  # free-format frames (index 0) declare no length
    kbps = _MP3_KBPS[(version == 3, layer)][rate_index]
    rate = _MP3_RATES[version][sr_index]
    pad = (head[2] >> 1) & 1
    if layer == 1:
        return (12 * kbps * 1000 // rate + pad) * 4
    per_frame = 144 if layer == 2 or version == 3 else 72
    return per_frame * kbps * 1000 // rate + pad


def adts_frame_length(head: bytes) -> int | None:
    """Bytes of the ADTS frame (header included) whose header is ``head``."""
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0:
        return None
    return ((head[3] & 0x03) << 11) | (head[4] << 3) | (head[5] >> 5)


def short_by(codec: str, data: bytes) -> int:
    """How many bytes the frame ``data`` lacks according to its own header (0: whole)."""
    if codec == "mp3" or codec in ("mp2", "mp1"):
        want = mpeg_audio_frame_length(data[:4])
    elif codec == "aac":
        want = adts_frame_length(data[:7])
    else:
        return 0
    return max(0, want - len(data)) if want else 0
