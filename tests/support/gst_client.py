"""A GStreamer webrtcbin peer that publishes test video and counts the decoded frames echoed back.

Run by the tests with the SYSTEM Python (``/usr/bin/python3``), whose ``gi`` has GStreamer's
bindings (Debian: python3-gst-1.0, gir1.2-gst-plugins-bad-1.0, gstreamer1.0-nice,
gstreamer1.0-plugins-{base,good,bad,ugly}); it imports nothing from the repository or the
virtualenv. webrtcbin keeps its own RSA DTLS certificate and its defaults (``a=setup:actpass``).

Two ways to signal:

- ``--whip URL --token T``: a WHIP client of its own (urllib): POST the offer with
  ``Authorization: Bearer``, apply the answer; with ``--trickle`` the offer goes out before
  gathering and each candidate follows in a PATCH carrying ``If-Match`` with the 201's ETag.
- ``--stdio``: the offer is printed as one JSON line ``{"type": "offer", "sdp": ...}`` (candidates
  included) and ``{"type": "answer", "sdp": ...}`` is read from stdin: the test relays them over
  the service's WebSocket protocol.

With ``--audio`` it publishes Opus audio as well as video. The last line printed is
``{"type": "result", "frames": N, "audio_frames": M, "received": [ENCODING, ...], ...}``: decoded
video frames and audio buffers received and the RTP encodings of what came back, once
``--frames`` came or ``--timeout`` passed; the exit status is 0 when enough frames came.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

ENCODERS = {
    "vp8": "vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay pt=96 config-interval=-1 "
    "! application/x-rtp,media=video,encoding-name=H264,payload=96",
}


AUDIO = (
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc ! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! webrtc."
)


def emit(message: dict) -> None:
    print(json.dumps(message), flush=True)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.frames = 0
        self.audio_frames = 0
        self.received: list[str] = []  # the encoding of each stream that came back
        self.error: str | None = None
        self.location: str | None = None
        self.etag: str | None = None
        self.answered = False
        self.pending: list[tuple[int, str]] = []  # candidates found before the answer came
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(
            "webrtcbin name=webrtc bundle-policy=max-bundle "
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 "
            f"! videoconvert ! queue ! {ENCODERS[args.codec]} ! webrtc. " + (AUDIO if args.audio else "")
        )
        self.webrtc = self.pipeline.get_by_name("webrtc")
        # Held for the pipeline's life: PyGObject 3.42 drops a reference of the agent it did not
        # take when the wrapper of a GstObject property is collected.
        self.ice = self.webrtc.get_property("ice-agent")
        if args.local_address:  # libnice leaves loopback out unless told; the tests' media stays on it
            self.ice.emit("add-local-ip-address", args.local_address)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("pad-added", self.on_pad_added)
        self.pipeline.get_bus().add_signal_watch()
        self.pipeline.get_bus().connect("message::error", self.on_bus_error)

    # Media

    def on_pad_added(self, _webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        self.received.append(caps.get_structure(0).get_string("encoding-name") or "?")
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded_pad)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded_pad(self, _decode: Gst.Element, pad: Gst.Pad) -> None:
        kind = pad.get_current_caps().to_string()
        if not kind.startswith(("video/x-raw", "audio/x-raw")):
            return
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)
        sink.connect("handoff", self.on_frame if kind.startswith("video") else self.on_audio)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def on_frame(self, *_: object) -> None:
        self.frames += 1
        self.check_done()

    def on_audio(self, *_: object) -> None:
        self.audio_frames += 1
        self.check_done()

    def done(self) -> bool:
        return self.frames >= self.args.frames and (not self.args.audio or self.audio_frames >= self.args.frames)

    def check_done(self) -> None:
        if self.done():
            GLib.idle_add(self.loop.quit)

    def on_bus_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self.fail(f"{error.message} ({debug})")

    def fail(self, error: str) -> None:
        self.error = self.error or error
        GLib.idle_add(self.loop.quit)

    # Negotiation

    def on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        for transceiver in self.transceivers():
            transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDRECV)
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, None)
        webrtc.emit("create-offer", None, promise)

    def transceivers(self) -> list[GstWebRTC.WebRTCRTPTransceiver]:
        found, index = [], 0
        while (transceiver := self.webrtc.emit("get-transceiver", index)) is not None:
            found.append(transceiver)
            index += 1
        return found

    def on_offer_created(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()  # kept: the offer is freed with it when chained in one expression
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        if self.args.trickle:  # the offer goes now; candidates follow as they are found
            self.send_offer(offer.sdp.as_text())

    def on_gathering(self, webrtc: Gst.Element, _spec: object) -> None:
        complete = webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if complete and not self.args.trickle:  # the offer goes with every candidate in it
            self.send_offer(webrtc.get_property("local-description").sdp.as_text())
        elif complete and self.answered:
            self.patch("a=end-of-candidates\r\n")

    def on_ice_candidate(self, _webrtc: Gst.Element, index: int, candidate: str) -> None:
        if not self.args.trickle or not candidate:
            return
        if self.answered:
            self.patch(self.fragment(index, candidate))
        else:
            self.pending.append((index, candidate))

    def fragment(self, index: int, candidate: str) -> str:
        """An RFC 8840 sdpfrag for one candidate: the ICE credentials, then the candidate's media
        section with its mid (webrtcbin names candidates by m-line index; WHIP wants the mid)."""
        local = self.webrtc.get_property("local-description").sdp
        media = local.get_media(index)
        ufrag, pwd = media.get_attribute_val("ice-ufrag"), media.get_attribute_val("ice-pwd")
        return (
            f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
            f"m={media.get_media()} 9 {media.get_proto()} {media.get_format(0)}\r\n"
            f"a=mid:{media.get_attribute_val('mid')}\r\na={candidate}\r\n"
        )

    def send_offer(self, sdp: str) -> None:
        if self.args.stdio:
            emit({"type": "offer", "sdp": sdp})
            threading.Thread(target=self.read_answer, daemon=True).start()
            return
        try:
            answer = self.request("POST", self.args.whip, sdp, "application/sdp")
        except RuntimeError as exc:
            self.fail(str(exc))
            return
        self.apply_answer(answer)

    def read_answer(self) -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("type") == "answer":
                GLib.idle_add(self.apply_answer, message["sdp"])
                return
        self.fail("stdin closed before an answer came")

    def apply_answer(self, sdp: str) -> bool:
        result, message = GstSdp.SDPMessage.new_from_text(sdp)
        if result != GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        self.answered = True
        for index, candidate in self.pending:
            self.patch(self.fragment(index, candidate))
        self.pending.clear()
        return False

    # WHIP over urllib

    def request(self, method: str, url: str, body: str, content_type: str, etag: str | None = None) -> str:
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {self.args.token}"}
        if etag:
            headers["If-Match"] = etag
        request = urllib.request.Request(url, body.encode(), headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if method == "POST":
                    self.location = urllib.parse.urljoin(url, response.headers["Location"])
                    self.etag = response.headers.get("ETag")
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {url}: {exc.code} {exc.read()[:300]!r}") from None
        except OSError as exc:
            raise RuntimeError(f"{method} {url}: {exc}") from None

    def patch(self, fragment: str) -> None:
        assert self.location is not None
        try:
            self.request("PATCH", self.location, fragment, "application/trickle-ice-sdpfrag", self.etag)
        except RuntimeError as exc:
            self.fail(str(exc))

    def delete(self) -> None:
        if self.location:
            try:
                self.request("DELETE", self.location, "", "text/plain")
            except RuntimeError as exc:
                self.error = self.error or str(exc)

    def run(self) -> int:
        GLib.timeout_add_seconds(self.args.timeout, self.loop.quit)
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        self.delete()
        emit(
            {
                "type": "result",
                "frames": self.frames,
                "audio_frames": self.audio_frames,
                "error": self.error,
                "codec": self.args.codec,
                "received": sorted(self.received),
                "gstreamer": Gst.version_string(),
            }
        )
        return 0 if self.done() else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="vp8")
    parser.add_argument("--frames", type=int, default=30, help="decoded echoed frames to wait for (of each kind)")
    parser.add_argument("--audio", action="store_true", help="publish Opus audio too, and wait for its echo")
    parser.add_argument("--timeout", type=int, default=30, help="seconds to wait for them")
    signal = parser.add_mutually_exclusive_group(required=True)
    signal.add_argument("--whip", metavar="URL", help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip")
    signal.add_argument("--stdio", action="store_true", help="offer on stdout, answer on stdin (JSON lines)")
    parser.add_argument("--token", default="", help="the access token (WHIP)")
    parser.add_argument("--local-address", help="gather candidates on this address only (e.g. 127.0.0.1)")
    parser.add_argument("--trickle", action="store_true", help="WHIP: trickle candidates in PATCH requests")
    args = parser.parse_args()
    Gst.init(None)
    return Client(args).run()


if __name__ == "__main__":
    sys.exit(main())
