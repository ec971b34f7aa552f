"""Running tests/support/gst_client.py, the GStreamer webrtcbin peer, from the tests.

GStreamer's Python bindings (``gi``) are Debian packages of the system Python, not of the test
virtualenv: the peer runs as a subprocess of ``/usr/bin/python3`` and talks JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.tools import unavailable

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("gst_client.py")
INSTALL = (
    "apt-get install python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly "
    "(or .ci/install-tools)"
)
#: Every element the peer uses; H.264 is decoded by whichever decoder decodebin finds.
CHECK = """
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstWebRTC, GstSdp
Gst.init(None)
need = ["webrtcbin", "nicesrc", "dtlssrtpenc", "videotestsrc", "vp8enc", "vp8dec", "rtpvp8pay", "x264enc",
        "rtph264pay", "decodebin", "fakesink", "audiotestsrc", "opusenc", "rtpopuspay", "opusdec"]
missing = [e for e in need if Gst.ElementFactory.find(e) is None]
if not any(Gst.ElementFactory.find(e) for e in ("avdec_h264", "openh264dec")):
    missing.append("an H.264 decoder")
print(" ".join(missing))
"""


@functools.cache
def _missing() -> str:
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run ({exc})"
    if done.returncode != 0:
        return f"GStreamer's Python bindings are missing ({done.stderr.strip().splitlines()[-1:]})"
    return done.stdout.strip()


def require_gstreamer() -> None:
    """Fail (CI) or skip unless the system Python has GStreamer with every element the peer uses."""
    if missing := _missing():
        unavailable(f"GStreamer for tests/support/gst_client.py: missing {missing}; install with: {INSTALL}")


class GstPeer:
    """One gst_client.py process; ``result()`` waits for its last line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> GstPeer:
        require_gstreamer()
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON,
            str(CLIENT),
            "--local-address",
            "127.0.0.1",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def read(self, type_: str, timeout: float) -> dict[str, Any]:
        """The next JSON line of ``type_`` the peer prints."""
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError(f"gst_client.py ended before {type_}: {await self.stderr()}")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("type") == type_:
                    return message

    async def write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(asyncio.TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 5)).decode(errors="replace")[-3000:]
        return ""

    async def result(self, timeout: float) -> dict[str, Any]:
        try:
            return await self.read("result", timeout)
        finally:
            await self.close()

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        await self.proc.wait()
