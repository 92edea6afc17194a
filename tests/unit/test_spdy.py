"""SPDY/3.1 framing and header compression, checked against hand-assembled bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import zlib

import pytest

from crio_fast.streaming import spdy


def test_header_dictionary_is_the_spdy3_one():
    # Length and digest of the 1423-byte dictionary in the SPDY/3 specification (section 2.6.10.1).
    assert len(spdy.HEADER_DICTIONARY) == 1423
    assert hashlib.sha256(spdy.HEADER_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )
    assert spdy.HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.HEADER_DICTIONARY.endswith(b",*,enq=0.")


def test_header_block_layout():
    block = spdy.encode_header_block({"streamType": ["stdout"], "multi": ["a", "b"]})
    assert block == (
        struct.pack(">I", 2)
        + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 6) + b"stdout"
        + struct.pack(">I", 5) + b"multi" + struct.pack(">I", 3) + b"a\x00b"
    )
    assert spdy.decode_header_block(block) == {"streamtype": ["stdout"], "multi": ["a", "b"]}


def test_compression_round_trip_keeps_one_context_per_direction():
    compressor, decompressor = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
    blocks = [{"streamtype": [kind], "port": ["8080"], "requestid": [str(n)]}
              for n, kind in enumerate(["error", "data"] * 20)]
    sizes = []
    for headers in blocks:
        compressed = compressor.compress(headers)
        sizes.append(len(compressed))
        assert decompressor.decompress(compressed) == headers
    # A shared context makes repeated headers cheap; a fresh context per block would not.
    assert sizes[-1] < sizes[0] / 2


def test_compressed_block_uses_the_dictionary():
    compressed = spdy.HeaderCompressor().compress({"content-type": ["text/plain"]})
    # zlib header with FDICT set, then the Adler-32 of the dictionary.
    assert compressed[1] & 0x20
    assert compressed[2:6] == struct.pack(">I", zlib.adler32(spdy.HEADER_DICTIONARY))
    plain = zlib.decompressobj(zdict=spdy.HEADER_DICTIONARY).decompress(compressed)
    assert plain == spdy.encode_header_block({"content-type": ["text/plain"]})


def test_frame_layouts():
    assert spdy.data_frame(5, spdy.FLAG_FIN, b"abc") == b"\x00\x00\x00\x05\x01\x00\x00\x03abc"
    assert spdy.rst_stream_frame(7, spdy.RST_CANCEL) == bytes.fromhex("80030003 00000008 00000007 00000005")
    assert spdy.ping_frame(2) == bytes.fromhex("80030006 00000004 00000002")
    assert spdy.goaway_frame(9, spdy.GOAWAY_PROTOCOL_ERROR) == bytes.fromhex("80030007 00000008 00000009 00000001")
    assert spdy.window_update_frame(1, 1000) == bytes.fromhex("80030009 00000008 00000001 000003e8")
    assert spdy.settings_frame([(0, 7, 65536)]) == bytes.fromhex("80030004 0000000c 00000001 00000007 00010000")
    syn = spdy.syn_stream_frame(spdy.HeaderCompressor(), 3, {"streamtype": ["error"]}, spdy.FLAG_FIN)
    assert syn[:5] == bytes.fromhex("8003000101")
    assert struct.unpack(">I", syn[4:8])[0] & 0xFFFFFF == len(syn) - 8
    assert syn[8:18] == bytes.fromhex("00000003 00000000 0000")
    assert spdy.HeaderDecompressor().decompress(syn[18:]) == {"streamtype": ["error"]}


def test_bad_header_blocks_are_protocol_errors():
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(b"not zlib at all")
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_header_block(struct.pack(">I", 1) + struct.pack(">I", 100) + b"short")
    with pytest.raises(spdy.ProtocolError):
        block = spdy.encode_header_block({"a": ["1"]})
        spdy.decode_header_block(struct.pack(">I", 2) + block[4:] + block[4:])  # duplicate name
    bomb = zlib.compressobj(zdict=spdy.HEADER_DICTIONARY)
    huge = bomb.compress(b"\x00" * (spdy.MAX_HEADER_BLOCK * 4)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(huge)


async def _session_pair():
    """A server session on one end of a real socketpair; the other end stays raw for the test."""
    server_sock, raw_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    raw_reader, raw_writer = await asyncio.open_connection(sock=raw_sock)
    opened = []

    def on_stream(stream):
        stream.reply()
        opened.append(stream)

    session = spdy.SpdySession(reader, writer, is_server=True, on_stream=on_stream)
    return session, opened, raw_reader, raw_writer


async def _read_frame(reader):
    header = await reader.readexactly(8)
    length = struct.unpack(">I", header[4:])[0] & 0xFFFFFF
    return header, await reader.readexactly(length)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x80\x02\x00\x01\x00\x00\x00\x00",  # SPDY/2
        b"\x80\x03\x00\x06\x00\x00\x00\x03abc",  # PING of the wrong size
        b"\x80\x03\x00\x01\x00\x00\x00\x0a" + b"\x00\x00\x00\x02" + b"\x00" * 6,  # even stream id from a client
        b"\x80\x03\x00\x01\x00\xff\xff\xff",  # frame over the size limit
        b"\x80\x03\x00\x04\x00\x00\x00\x05\x00\x00\x00\x09x",  # SETTINGS count does not match its length
    ],
)
def test_garbage_ends_the_session_with_goaway(garbage):
    async def main():
        session, _, raw_reader, raw_writer = await _session_pair()
        run = asyncio.ensure_future(session.run())
        raw_writer.write(garbage)
        await raw_writer.drain()
        await asyncio.wait_for(run, 5)  # returns, never raises
        rest = await asyncio.wait_for(raw_reader.read(), 5)
        assert rest[:4] == bytes.fromhex("80030007") and rest[-4:] == b"\x00\x00\x00\x01"  # GOAWAY PROTOCOL_ERROR
        assert session.closed
        raw_writer.close()

    asyncio.run(main())


def test_session_streams_ping_fin_and_reset():
    async def main():
        session, opened, raw_reader, raw_writer = await _session_pair()
        run = asyncio.ensure_future(session.run())
        compressor, decompressor = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
        raw_writer.write(spdy.syn_stream_frame(compressor, 1, {"streamtype": ["stdin"]}))
        raw_writer.write(spdy.ping_frame(1))
        raw_writer.write(spdy.window_update_frame(1, 100000))
        raw_writer.write(spdy.data_frame(1, 0, b"hello "))
        raw_writer.write(spdy.data_frame(1, spdy.FLAG_FIN, b"world"))
        header, payload = await _read_frame(raw_reader)
        assert header[:4] == bytes.fromhex("80030002")  # SYN_REPLY
        assert struct.unpack(">I", payload[:4])[0] == 1 and decompressor.decompress(payload[4:]) == {}
        assert await _read_frame(raw_reader) == (bytes.fromhex("80030006 00000004"), b"\x00\x00\x00\x01")
        stream = opened[0]
        assert stream.header("streamType") == "stdin"
        assert await stream.reader.read() == b"hello world"
        big = os.urandom(100_000)
        await stream.write(big)
        await stream.close()
        received = b""
        while True:
            header, payload = await _read_frame(raw_reader)
            assert header[:4] == b"\x00\x00\x00\x01"
            assert len(payload) <= spdy.MAX_SEND_DATA
            received += payload
            if header[4] & spdy.FLAG_FIN:
                break
        assert received == big
        # A reset stream refuses writes.
        raw_writer.write(spdy.syn_stream_frame(compressor, 3, {"streamtype": ["stdout"]}))
        raw_writer.write(spdy.rst_stream_frame(3, spdy.RST_CANCEL))
        await _read_frame(raw_reader)
        for _ in range(100):
            if opened[-1].reset:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(spdy.StreamClosed):
            await opened[-1].write(b"x")
        raw_writer.close()
        await asyncio.wait_for(run, 5)
        assert session.closed

    asyncio.run(main())


def test_random_frames_never_raise_out_of_the_session():
    """Structurally plausible random frames (any type, flags, payload), then EOF: run() just returns."""
    rng = __import__("random").Random(1234)

    async def main():
        for _ in range(200):
            session, _, raw_reader, raw_writer = await _session_pair()
            run = asyncio.ensure_future(session.run())
            for _ in range(rng.randint(1, 6)):
                payload = rng.randbytes(rng.randint(0, 64))
                if rng.random() < 0.5:
                    raw_writer.write(spdy.control_frame(rng.randint(0, 12), rng.randint(0, 255), payload))
                else:
                    raw_writer.write(spdy.data_frame(rng.randint(0, 9), rng.randint(0, 255), payload))
            raw_writer.close()
            await asyncio.wait_for(run, 5)
            assert session.closed

    asyncio.run(main())
