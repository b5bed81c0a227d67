/*
 * rt_tagger_sub: a minimal rt-tagger subscriber in C, using only libzmq.
 *
 * Every message is two frames: the topic ("tags.<stream_id>" and a terminating NUL byte) and one
 * line of JSON (see docs/messages.md). No JSON library is needed to follow the stream: we print
 * "<topic> <json>" per message on stdout (topic without its NUL) and pull the top-level "seq" and
 * "kind" out with a tiny scan to spot gaps and the end of a stream.
 *
 *   rt_tagger_sub [-b] [-e ENDPOINT] [-s STREAM | -t TOPIC] [-n COUNT] [-w TIMEOUT_MS]
 *
 * -b reads the compact binary encoding instead (topic "tagb.", docs/messages.md "Compact
 * encoding"): the publisher then does less work per message. Each frame is printed as one JSON line
 * with the fields it carries (kind, seq, state, window, times, drops, scores, tags, top, active,
 * events); tag names come from the names section that a stream's first frame carries (until then,
 * "#<index>"). An end message carries the full JSON body, printed as it came.
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
#define MAX_VOCABS 8

/* ---- compact frames (docs/messages.md, "Compact encoding"): little-endian, version 1 ---------- */
#define COMPACT_VERSION 1
#define HEADER_SIZE 132
enum { F_WINDOW = 1, F_CAPTURE = 2, F_BACKLOG = 4, F_NAMES = 8, F_JSON_TAIL = 16, F_EMBEDDING = 32 };

struct vocab {
    unsigned vocab_id;
    unsigned n_tags;
    char *blob;           /* n_tags + 5 NUL-terminated strings */
    const char **names;   /* n_tags + 5 pointers into blob */
};

static struct vocab vocabs[MAX_VOCABS];
static int n_vocabs = 0;

static unsigned rd_u16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }
static unsigned long rd_u32(const unsigned char *p) {
    return (unsigned long)p[0] | (unsigned long)p[1] << 8 | (unsigned long)p[2] << 16 | (unsigned long)p[3] << 24;
}
static unsigned long long rd_u64(const unsigned char *p) {
    return (unsigned long long)rd_u32(p) | (unsigned long long)rd_u32(p + 4) << 32;
}
static float rd_f32(const unsigned char *p) {
    unsigned long u = rd_u32(p);
    unsigned int v = (unsigned int)u;
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}
static double rd_f64(const unsigned char *p) {
    unsigned long long u = rd_u64(p);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static const struct vocab *find_vocab(unsigned long id) {
    for (int i = 0; i < n_vocabs; i++)
        if (vocabs[i].vocab_id == id) return &vocabs[i];
    return NULL;
}

/* Keep a names section (at p, len bytes available); returns its size or -1 if malformed. */
static long keep_vocab(unsigned long id, const unsigned char *p, size_t len) {
    if (len < 6) return -1;
    unsigned n = rd_u16(p);
    unsigned long nbytes = rd_u32(p + 2);
    if (nbytes > len - 6) return -1;
    if (find_vocab(id) == NULL) {
        struct vocab *v = &vocabs[n_vocabs < MAX_VOCABS ? n_vocabs++ : MAX_VOCABS - 1];
        if (v->blob) { free(v->blob); free(v->names); }
        v->blob = malloc(nbytes + 1);
        v->names = calloc(n + 5, sizeof *v->names);
        if (!v->blob || !v->names) return -1;
        memcpy(v->blob, p + 6, nbytes);
        v->blob[nbytes] = '\0';
        size_t pos = 0;
        for (unsigned i = 0; i < n + 5; i++) {
            if (pos >= nbytes) return -1;
            v->names[i] = v->blob + pos;
            pos += strlen(v->blob + pos) + 1;
        }
        v->vocab_id = (unsigned)id;
        v->n_tags = n;
    }
    return (long)(6 + nbytes);
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void print_tag(const struct vocab *v, unsigned i) {
    if (v && i < v->n_tags) print_json_string(v->names[i]);
    else printf("\"#%u\"", i);
}

static void print_number(double x) {
    if (x != x) printf("null"); /* NaN: the field is null */
    else printf("%.9g", x);
}

/* Print one compact frame as a JSON line; fills seq/is_end. Returns 0, or -1 if malformed. */
static int print_compact(const unsigned char *f, size_t len, long long *seq, int *is_end) {
    static const char *kinds[] = {"tags", "heartbeat", "end"};
    static const char *states[] = {NULL, "music", "not_music", "silence"};
    static const char *reasons[] = {NULL, "silent", "stalled"};
    static const char *counters[] = {"publisher_dropped", "ring_overflow_samples", "ring_underflow_events",
                                     "input_status_flags", "resampler_dropped_samples", "device_reopens",
                                     "ingest_dropped_samples", "ingest_lost_chunks"};
    static const char *timings[] = {"capture_to_ring", "framing_mel", "inference", "aggregation", "publish"};
    if (len < HEADER_SIZE || f[0] != COMPACT_VERSION || f[1] > 2 || f[2] > 3 || f[3] > 2) return -1;
    unsigned flags = rd_u16(f + 4), n_scores = rd_u16(f + 6);
    unsigned n_top = f[128], n_active = f[129], n_events = f[130];
    unsigned long vocab_id = rd_u32(f + 68);
    *seq = (long long)rd_u64(f + 8);
    *is_end = f[1] == 2;
    size_t need = HEADER_SIZE + 4u * n_scores + 6u * n_top + 2u * n_active + 11u * n_events;
    if (len < need) return -1;
    const unsigned char *p = f + HEADER_SIZE;
    const unsigned char *scores = p;
    const unsigned char *top = scores + 4u * n_scores;       /* n_top u16 indices, n_top f32 scores */
    const unsigned char *active = top + 6u * n_top;          /* n_active u16 */
    const unsigned char *events = active + 2u * n_active;    /* u16 indices, u8 states, f64 times */
    p = f + need;
    if (flags & F_NAMES) {
        long used = keep_vocab(vocab_id, p, len - (size_t)(p - f));
        if (used < 0) return -1;
        p += used;
    }
    if (flags & F_EMBEDDING) {
        if ((size_t)(p - f) + 2 > len) return -1;
        p += 2 + 4u * rd_u16(p);
        if ((size_t)(p - f) > len) return -1;
    }
    if (flags & F_JSON_TAIL) { /* the whole message as JSON (end messages): print it as it is */
        printf("%.*s", (int)(len - (size_t)(p - f)), (const char *)p);
        return 0;
    }
    const struct vocab *v = find_vocab(vocab_id);
    printf("{\"kind\":\"%s\",\"seq\":%lld", kinds[f[1]], *seq);
    printf(",\"state\":");
    if (states[f[2]]) printf("\"%s\"", states[f[2]]); else printf("null");
    if (reasons[f[3]]) printf(",\"heartbeat_reason\":\"%s\"", reasons[f[3]]);
    if (flags & F_WINDOW)
        printf(",\"window\":{\"start_sample\":%lld,\"end_sample\":%lld,\"start_s\":%.9g,\"end_s\":%.9g}",
               (long long)rd_u64(f + 16), (long long)rd_u64(f + 24), rd_f64(f + 32), rd_f64(f + 40));
    printf(",\"capture_wall_time\":");
    print_number(flags & F_CAPTURE ? rd_f64(f + 48) : 0.0 / 0.0);
    printf(",\"publish_wall_time\":%.17g,\"backlog_s\":", rd_f64(f + 56));
    print_number(flags & F_BACKLOG ? rd_f32(f + 64) : 0.0 / 0.0);
    printf(",\"drops\":{");
    for (int i = 0; i < 8; i++) printf("%s\"%s\":%lu", i ? "," : "", counters[i], rd_u32(f + 72 + 4 * i));
    printf(",\"input_blocked_s\":%.9g},\"timings_ms\":{", rd_f32(f + 104));
    for (int i = 0; i < 5; i++) {
        printf("%s\"%s\":", i ? "," : "", timings[i]);
        print_number(rd_f32(f + 108 + 4 * i));
    }
    printf("},\"scores\":");
    if (n_scores) {
        for (unsigned i = 0; i < n_scores; i++) printf("%c%.9g", i ? ',' : '[', rd_f32(scores + 4 * i));
        printf("]");
    } else printf("null");
    if (n_scores && v) {
        printf(",\"tags\":[");
        for (unsigned i = 0; i < v->n_tags; i++) { if (i) putchar(','); print_json_string(v->names[i]); }
        printf("]");
    }
    printf(",\"top\":[");
    for (unsigned i = 0; i < n_top; i++) {
        printf("%s{\"tag\":", i ? "," : "");
        print_tag(v, rd_u16(top + 2 * i));
        printf(",\"score\":%.9g}", rd_f32(top + 2 * n_top + 4 * i));
    }
    printf("],\"active\":[");
    for (unsigned i = 0; i < n_active; i++) { if (i) putchar(','); print_tag(v, rd_u16(active + 2 * i)); }
    printf("],\"events\":[");
    for (unsigned i = 0; i < n_events; i++) {
        printf("%s{\"tag\":", i ? "," : "");
        print_tag(v, rd_u16(events + 2 * i));
        printf(",\"state\":\"%s\",\"time_s\":%.9g}", events[2 * n_events + i] ? "on" : "off",
               rd_f64(events + 3 * n_events + 8 * i));
    }
    printf("]");
    if (v) {
        const char **x = v->names + v->n_tags;
        printf(",\"model\":{\"name\":");
        print_json_string(x[0]);
        printf(",\"weights_sha256\":");
        print_json_string(x[1]);
        printf("},\"backend\":{\"name\":");
        print_json_string(x[2]);
        printf(",\"device\":");
        print_json_string(x[3]);
        printf(",\"precision\":");
        print_json_string(x[4]);
        printf("}");
    }
    printf("}");
    return 0;
}

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
    fprintf(stderr, "usage: %s [-b] [-e ENDPOINT] [-s STREAM | -t TOPIC] [-n COUNT] [-w TIMEOUT_MS]\n", prog);
}

int main(int argc, char **argv) {
    const char *endpoint = "tcp://127.0.0.1:5556";
    const char *topic = NULL; /* default: "tags." (JSON) or "tagb." (-b) */
    size_t topic_len = 0;
    const char *stream_id = NULL;
    int compact = 0;
    char exact[256];
    long count = -1; /* forever */
    int timeout_ms = -1; /* wait forever */
    int opt;
    while ((opt = getopt(argc, argv, "be:s:t:n:w:h")) != -1) {
        switch (opt) {
        case 'b': compact = 1; break;
        case 'e': endpoint = optarg; break;
        case 's': stream_id = optarg; topic = NULL; break;
        case 't': topic = optarg; topic_len = strlen(optarg); stream_id = NULL; break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 'w': timeout_ms = (int)strtol(optarg, NULL, 10); break;
        default: usage(argv[0]); return opt == 'h' ? 0 : 2;
        }
    }

    if (stream_id != NULL) { /* "tags.<id>" (or "tagb.<id>") plus its NUL: exactly one stream */
        if (snprintf(exact, sizeof exact, "%s%s", compact ? "tagb." : "tags.", stream_id) >= (int)sizeof exact) {
            fprintf(stderr, "rt_tagger_sub: stream id too long\n");
            return 2;
        }
        topic = exact;
        topic_len = strlen(exact) + 1;
    } else if (topic == NULL) {
        topic = compact ? "tagb." : "tags.";
        topic_len = 5;
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
            long long seq = 0;
            int ok, ended = 0;
            printf("%.*s ", (int)tlen, t);
            if (compact) {
                ok = print_compact((const unsigned char *)body, blen, &seq, &ended) == 0;
            } else {
                printf("%.*s", (int)blen, body);
                ok = parse_seq(body, blen, &seq) == 0;
                ended = ok && is_end(body, blen);
            }
            printf("\n");
            fflush(stdout);
            struct stream *s = find_stream(streams, &n_streams, t, tlen);
            if (!ok) {
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
                if (ended) s->ended = 1;
            }
        }
        for (int i = 0; i < nframes && i < 2; i++) zmq_msg_close(&frames[i]);
        if (all_ended(streams, n_streams)) break;
    }

    fprintf(stderr, "-- %ld messages, %ld gaps (%ld missing), %ld malformed, %d streams\n", received, gaps, missing,
            malformed, n_streams);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    for (int i = 0; i < n_vocabs; i++) { free(vocabs[i].blob); free(vocabs[i].names); }
    return status;
}
