/*
 * rt_tagger_sub: a minimal rt-tagger subscriber in C, using only libzmq.
 *
 * Every message is two frames: the topic ("tags.<stream_id>" and a terminating NUL byte) and one
 * line of JSON (see docs/messages.md). No JSON library is needed to follow the stream: we print
 * "<topic> <json>" per message on stdout (topic without its NUL) and pull the top-level "seq" and
 * "kind" out with a tiny scan to spot gaps and the end of a stream.
 *
 *   rt_tagger_sub [-e ENDPOINT] [-s STREAM | -t TOPIC] [-n COUNT] [-w TIMEOUT_MS]
 *
 * -s STREAM subscribes to exactly that stream: "tags.STREAM" including the NUL, so that stream
 * "mic" does not also bring "mic2" (a -t prefix would).
 *
 * Exit status: 0 when COUNT messages arrived, every stream seen sent its "end" message, or on
 * Ctrl-C; 1 on timeout, 2 on a usage or ZeroMQ error. Gaps and malformed messages are reported on
 * stderr, with a summary at the end.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_STREAMS 64

struct stream {
    char topic[256];
    long long last_seq;
    int ended;
};

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

/* Find the top-level "seq" value. The publisher never puts a key named "seq" anywhere else, and
 * a "seq" inside a string would be escaped (\"seq\"), so the first unescaped match is the one. */
static int parse_seq(const char *body, size_t len, long long *seq) {
    static const char key[] = "\"seq\":";
    size_t klen = sizeof key - 1;
    for (size_t i = 0; i + klen < len; i++) {
        if (memcmp(body + i, key, klen) == 0 && (i == 0 || body[i - 1] != '\\')) {
            char buf[32];
            size_t j = i + klen, n = 0;
            while (j < len && body[j] == ' ') j++;
            while (j < len && n < sizeof buf - 1 && (body[j] == '-' || (body[j] >= '0' && body[j] <= '9')))
                buf[n++] = body[j++];
            buf[n] = '\0';
            if (n == 0) return -1;
            *seq = strtoll(buf, NULL, 10);
            return 0;
        }
    }
    return -1;
}

/* True if the body's top-level "kind" is "end" (the publisher writes compact JSON: no spaces). */
static int is_end(const char *body, size_t len) {
    static const char key[] = "\"kind\":\"end\"";
    size_t klen = sizeof key - 1;
    for (size_t i = 0; i + klen <= len; i++)
        if (memcmp(body + i, key, klen) == 0 && (i == 0 || body[i - 1] != '\\')) return 1;
    return 0;
}

static int all_ended(const struct stream *s, int n) {
    for (int i = 0; i < n; i++)
        if (!s[i].ended) return 0;
    return n > 0;
}

static struct stream *find_stream(struct stream *s, int *n, const char *topic, size_t tlen) {
    for (int i = 0; i < *n; i++)
        if (strlen(s[i].topic) == tlen && memcmp(s[i].topic, topic, tlen) == 0) return &s[i];
    if (*n == MAX_STREAMS || tlen >= sizeof s[0].topic) return NULL;
    memcpy(s[*n].topic, topic, tlen);
    s[*n].topic[tlen] = '\0';
    s[*n].last_seq = -1;
    s[*n].ended = 0;
    return &s[(*n)++];
}

static void usage(const char *prog) {
    fprintf(stderr, "usage: %s [-e ENDPOINT] [-s STREAM | -t TOPIC] [-n COUNT] [-w TIMEOUT_MS]\n", prog);
}

int main(int argc, char **argv) {
    const char *endpoint = "tcp://127.0.0.1:5556";
    const char *topic = "tags.";
    size_t topic_len = strlen(topic);
    char exact[256];
    long count = -1; /* forever */
    int timeout_ms = -1; /* wait forever */
    int opt;
    while ((opt = getopt(argc, argv, "e:s:t:n:w:h")) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 's': /* "tags.<id>" plus its NUL: the exact topic of one stream */
            if (snprintf(exact, sizeof exact, "tags.%s", optarg) >= (int)sizeof exact) {
                fprintf(stderr, "rt_tagger_sub: stream id too long\n");
                return 2;
            }
            topic = exact;
            topic_len = strlen(exact) + 1;
            break;
        case 't': topic = optarg; topic_len = strlen(optarg); break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 'w': timeout_ms = (int)strtol(optarg, NULL, 10); break;
        default: usage(argv[0]); return opt == 'h' ? 0 : 2;
        }
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_msg_recv returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, topic_len);
    if (zmq_connect(sub, endpoint) != 0) {
        fprintf(stderr, "rt_tagger_sub: cannot connect to %s: %s\n", endpoint, zmq_strerror(errno));
        zmq_close(sub);
        zmq_ctx_term(ctx);
        return 2;
    }

    struct stream streams[MAX_STREAMS];
    int n_streams = 0;
    long received = 0, gaps = 0, missing = 0, malformed = 0;
    int status = 0;
    zmq_msg_t frames[2];

    while (!stop_requested && (count < 0 || received < count)) {
        int nframes = 0, more = 1, failed = 0;
        while (more) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, sub, 0) < 0) {
                zmq_msg_close(&part);
                failed = errno;
                break;
            }
            more = zmq_msg_more(&part);
            if (nframes < 2) { /* keep the first two frames */
                zmq_msg_init(&frames[nframes]);
                zmq_msg_move(&frames[nframes], &part);
            }
            zmq_msg_close(&part);
            nframes++;
        }
        if (failed) {
            for (int i = 0; i < nframes && i < 2; i++) zmq_msg_close(&frames[i]);
            if (failed == EINTR) break;
            if (failed == EAGAIN) {
                fprintf(stderr, "rt_tagger_sub: no message from %s for %d ms\n", endpoint, timeout_ms);
                status = 1;
            } else {
                fprintf(stderr, "rt_tagger_sub: receive failed: %s\n", zmq_strerror(failed));
                status = 2;
            }
            break;
        }
        received++;
        const char *t = zmq_msg_data(&frames[0]);
        size_t tlen = zmq_msg_size(&frames[0]);
        if (tlen > 0 && t[tlen - 1] == '\0') tlen--; /* the topic's terminator: not printed */
        if (nframes != 2) {
            malformed++;
            fprintf(stderr, "!! malformed: %d frames on %.*s\n", nframes, (int)tlen, t);
        } else {
            const char *body = zmq_msg_data(&frames[1]);
            size_t blen = zmq_msg_size(&frames[1]);
            long long seq;
            printf("%.*s %.*s\n", (int)tlen, t, (int)blen, body);
            fflush(stdout);
            struct stream *s = find_stream(streams, &n_streams, t, tlen);
            if (parse_seq(body, blen, &seq) != 0) {
                malformed++;
                fprintf(stderr, "!! malformed: no \"seq\" in message on %.*s\n", (int)tlen, t);
            } else if (s != NULL) {
                if (s->last_seq >= 0 && seq != s->last_seq + 1) {
                    if (seq > s->last_seq + 1) {
                        gaps++;
                        missing += seq - s->last_seq - 1;
                        fprintf(stderr, "!! %s: seq gap %lld -> %lld (%lld missing)\n", s->topic, s->last_seq, seq,
                                seq - s->last_seq - 1);
                    } else {
                        fprintf(stderr, "!! %s: seq went back %lld -> %lld\n", s->topic, s->last_seq, seq);
                    }
                }
                s->last_seq = seq;
                if (is_end(body, blen)) s->ended = 1;
            }
        }
        for (int i = 0; i < nframes && i < 2; i++) zmq_msg_close(&frames[i]);
        if (all_ended(streams, n_streams)) break;
    }

    fprintf(stderr, "-- %ld messages, %ld gaps (%ld missing), %ld malformed, %d streams\n", received, gaps, missing,
            malformed, n_streams);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return status;
}
