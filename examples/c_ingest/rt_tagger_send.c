/*
 * rt_tagger_send: send raw PCM from stdin to `rt-tagger serve` as one stream, using only libzmq.
 *
 * The ingest protocol (docs/ingest.md): a DEALER socket connects to the server's ROUTER; every
 * message is a JSON header frame followed by payload frames. We send
 *   open   {"type":"open","stream_id":ID,"sample_rate":R,"channels":C,"format":"s16le"}
 *   audio  {"type":"audio","chunks":[{"stream_id":ID,"seq":N,"frames":F}]} + F*C*2 bytes of PCM
 *   close  {"type":"close","stream_id":ID}
 * and wait for the server's "opened" / "closed" answers (any other answer is printed and ends the
 * program with status 1). Tags arrive on the server's PUB socket, e.g. `rt_tagger_sub -s ID`.
 *
 *   rt_tagger_send -r RATE [-c CHANNELS] [-i ID] [-e ENDPOINT] [-f FRAMES] [-p] < audio.s16le
 *
 * -p paces the chunks at real time (a live source); without it, chunks go as fast as the server
 * takes them (open the stream with "pace":"batch"). Exit status: 0 when the server closed the
 * stream, 1 when it refused or answered with an error, 2 on usage or ZeroMQ errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* Wait for one answer; 0 if its "type" is `want`, else print it and return 1. */
static int expect(void *sock, const char *want, int timeout_ms) {
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0) {
        fprintf(stderr, "rt_tagger_send: no answer from the server within %d ms\n", timeout_ms);
        return 1;
    }
    char buf[2048];
    int n = zmq_recv(sock, buf, sizeof buf - 1, 0);
    if (n < 0) return 1;
    buf[n < (int)sizeof buf - 1 ? n : (int)sizeof buf - 1] = '\0';
    char key[64];
    snprintf(key, sizeof key, "\"type\":\"%s\"", want);
    if (strstr(buf, key) == NULL) {
        fprintf(stderr, "rt_tagger_send: server answered %s\n", buf);
        return 1;
    }
    return 0;
}

static void sleep_until(struct timespec *t) {
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) != 0) {}
}

int main(int argc, char **argv) {
    const char *endpoint = "tcp://127.0.0.1:5557", *id = "c";
    long rate = 0, channels = 1, frames = 1600;
    int pace = 0, opt;
    while ((opt = getopt(argc, argv, "e:i:r:c:f:p")) != -1) {
        switch (opt) {
            case 'e': endpoint = optarg; break;
            case 'i': id = optarg; break;
            case 'r': rate = strtol(optarg, NULL, 10); break;
            case 'c': channels = strtol(optarg, NULL, 10); break;
            case 'f': frames = strtol(optarg, NULL, 10); break;
            case 'p': pace = 1; break;
            default:
                fprintf(stderr, "usage: rt_tagger_send -r RATE [-c CHANNELS] [-i ID] [-e ENDPOINT] [-f FRAMES] [-p]\n");
                return 2;
        }
    }
    if (rate <= 0 || channels <= 0 || frames <= 0 || strlen(id) > 128) {
        fprintf(stderr, "rt_tagger_send: -r RATE (> 0) is required; channels and frames must be > 0\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 2000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "rt_tagger_send: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 2;
    }
    char header[512];
    int n = snprintf(header, sizeof header,
                     "{\"type\":\"open\",\"stream_id\":\"%s\",\"sample_rate\":%ld,\"channels\":%ld,"
                     "\"format\":\"s16le\",\"options\":{\"pace\":\"%s\"}}",
                     id, rate, channels, pace ? "live" : "batch");
    zmq_send(sock, header, (size_t)n, 0);
    int status = expect(sock, "opened", 30000);
    size_t frame_bytes = (size_t)(channels * 2), cap = (size_t)frames * frame_bytes;
    char *pcm = malloc(cap);
    long long seq = 0, sent_frames = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (status == 0) {
        size_t got = 0, r;
        while (got < cap && (r = fread(pcm + got, 1, cap - got, stdin)) > 0) got += r;
        long f = (long)(got / frame_bytes);
        if (f == 0) break;
        if (pace) { /* a chunk leaves when its last frame would have been captured */
            long long ns = next.tv_nsec + (long long)f * 1000000000LL / rate;
            next.tv_sec += ns / 1000000000LL;
            next.tv_nsec = ns % 1000000000LL;
            sleep_until(&next);
        }
        n = snprintf(header, sizeof header,
                     "{\"type\":\"audio\",\"chunks\":[{\"stream_id\":\"%s\",\"seq\":%lld,\"frames\":%ld}]}", id, seq++, f);
        zmq_send(sock, header, (size_t)n, ZMQ_SNDMORE);
        zmq_send(sock, pcm, (size_t)f * frame_bytes, 0);
        sent_frames += f;
        if (got < cap) break;
    }
    if (status == 0) {
        n = snprintf(header, sizeof header, "{\"type\":\"close\",\"stream_id\":\"%s\"}", id);
        zmq_send(sock, header, (size_t)n, 0);
        status = expect(sock, "closed", 60000);
        fprintf(stderr, "rt_tagger_send: %lld chunks, %lld frames sent; stream %s\n", seq, sent_frames,
                status == 0 ? "closed" : "not closed");
    }
    free(pcm);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
