"""The subscriber process of ``bench stream``: receives messages and records when they arrived.

Run as ``python -m bench.stream_sub ENDPOINT TOPIC[,TOPIC…] OUT.jsonl [compact]``. Every received message
becomes one JSON line ``{"recv": <unix time>, "msg": <message>}`` (the body is written as it came,
not parsed here, so one subscriber keeps up with tens of thousands of messages a second); it exits
on SIGINT/SIGTERM after flushing.
With ``compact`` (``bench serve --group-size``: ~200 000 messages a second) compact frames
(topics ``tagb.…``) are not written one by one: the 132 header bytes of each, its topic and
its arrival time are kept and saved as ``OUT.npz`` on exit; other messages (JSON: stats, and the
JSON tail of ``end`` frames) are lines of ``OUT.jsonl`` as above. With ``groups`` group frames
(topics ``tagg.…``, one per window of a stream group) are split into their rows and kept the same
way, each row under its stream's compact topic.

A separate OS process on purpose: the latency a real subscriber sees includes the hop across processes.
"""

from __future__ import annotations

import signal
import sys
import time


def main(argv: list[str]) -> int:
    import zmq

    endpoint, topics, out_path, *mode = argv
    compact = mode in (["compact"], ["groups"])
    heads, names, recvs = bytearray(), [], []
    row_topics: dict[bytes, list[bytes]] = {}  # a group frame's ids block -> its rows' topics
    stop = False

    def handler(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100000)
    for topic in topics.split(","):
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    with open(out_path, "wb") as out:
        print("ready", flush=True)  # the parent waits for this line before starting the tagger
        while not stop:
            if not poller.poll(50):
                continue
            while True:
                try:
                    topic, body = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.time()
                if compact and topic.startswith(b"tagg."):
                    for row_topic, frame in _group_rows(body, row_topics):
                        if frame[4] & 16:
                            out.write(b'{"recv": %.6f, "msg": %s}\n' % (now, bytes(frame[132:])))
                        else:
                            heads += frame[:132]
                            names.append(row_topic)
                            recvs.append(now)
                    continue
                if compact and topic.startswith(b"tagb."):
                    if body[4] & 16:  # F_JSON_TAIL: an end message, its JSON after the header
                        out.write(b'{"recv": %.6f, "msg": %s}\n' % (now, body[132:]))
                    else:
                        heads += body[:132]
                        names.append(topic)
                        recvs.append(now)
                    continue
                out.write(b'{"recv": %.6f, "msg": %s}\n' % (now, body))
            out.flush()
    sock.close()
    ctx.term()
    if compact:
        import numpy as np

        np.savez(out_path + ".npz", head=np.frombuffer(bytes(heads), np.uint8), topic=np.array(names, "S"),
                 recv=np.array(recvs, np.float64))  # fmt: skip
    return 0


def _group_rows(body: bytes, row_topics: dict):
    """``(compact topic, frame)`` of each row of a group frame (rt_tagger.compact's layout)."""
    from rt_tagger.compact import GROUP_HEADER, compact_topic, split_group_frame

    rows = split_group_frame(body)
    ids_len = GROUP_HEADER.unpack_from(body)[4]
    key = bytes(body[GROUP_HEADER.size : GROUP_HEADER.size + ids_len])
    topics = row_topics.get(key)
    if topics is None:
        topics = row_topics[key] = [compact_topic(sid) for sid, _ in rows]
    return zip(topics, (frame for _, frame in rows), strict=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
