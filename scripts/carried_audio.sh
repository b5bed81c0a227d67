#!/usr/bin/env bash
# PulseAudio + PortAudio for machines without apt or network (the GPU device machine), carried as
# Debian 12 .debs in .pa/ (git-ignored through .git/info/exclude) and run from a private prefix,
# so that `python -m bench stream --source mic` finds the null sink rt_null and the PortAudio
# device "pulse" there as it does here (scripts/start_test_audio.sh).
#
#   scripts/carried_audio.sh download   # here (Debian 12, the packages installed): the .debs -> .pa/
#   scripts/carried_audio.sh setup      # there, from the repo root: unpack, start, check; writes the
#                                       # env file ($RT_AUDIO_PREFIX/env) to source afterwards
#   scripts/carried_audio.sh stop       # stop the daemon that setup started
#
# Nothing is written outside $RT_AUDIO_PREFIX (default /opt/rt-audio): everything is found through
# environment variables (PATH, LD_LIBRARY_PATH, ALSA_CONFIG_PATH, PULSE_*) and absolute paths in a
# generated ALSA config. One exception, only where needed: sounddevice finds PortAudio with
# ctypes.util.find_library, which asks `ldconfig -p`, then gcc/cc or ld with LIBRARY_PATH /
# LD_LIBRARY_PATH. Without a compiler or linker on the machine, setup adds a ld.so.conf.d entry for a
# folder that holds only libportaudio (it cannot shadow a system library) and runs ldconfig.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=.pa
PREFIX=${RT_AUDIO_PREFIX:-/opt/rt-audio}
PY=${PYTHON:-python3}
SINK=rt_null
# Packages whose files we run; their libraries always come from the prefix (the pulse libraries
# are version-locked to each other; the ALSA plugin is built against this libasound).
CORE=(pulseaudio pulseaudio-utils libpulse0 libportaudio2 libasound2 libasound2-plugins)
# Every image has these (and they must match its own libc), so they are never carried.
SKIP=" libc6 libstdc++6 libgcc-s1 "

say() { echo "carried_audio: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

download() {
  local ma mods files pkgs p f
  ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
  mods=$(dpkg -L pulseaudio | grep -m1 '/modules/module-null-sink.so$' | xargs -r dirname) \
    || die "pulseaudio is not installed here (apt-get install ${CORE[*]})"
  # What we run: the daemon, 3 modules, paplay/pactl, PortAudio and the ALSA pulse plugin.
  files=(/usr/bin/pulseaudio /usr/bin/pacat /usr/bin/pactl "$mods"/module-{null-sink,native-protocol-unix,always-sink}.so
    "$mods"/libprotocol-native.so /usr/lib/"$ma"/libportaudio.so.2 /usr/lib/"$ma"/alsa-lib/libasound_module_{pcm,ctl}_pulse.so)
  # Their packages and the packages of every library they load (ldd: the whole closure). Paths go
  # through /usr: Debian 12 is usr-merged but dpkg may know a library under /lib.
  for f in "${files[@]}"; do [ -e "$f" ] || die "$f is missing here (apt-get install ${CORE[*]})"; done
  pkgs=$(for f in "${files[@]}"; do echo "$f"; ldd "$f" | awk '/=> \//{print $3}'; done | sort -u | while read -r f; do
      dpkg -S "$f" 2>/dev/null || dpkg -S "/usr${f#/usr}" 2>/dev/null || dpkg -S "$(readlink -f "$f")" 2>/dev/null || true
    done | cut -d: -f1 | sort -u)
  pkgs=$(printf '%s\n' $pkgs "${CORE[@]}" | sort -u | while read -r p; do [[ "$SKIP" == *" $p "* ]] || echo "$p"; done)
  mkdir -p "$DEBS" && rm -f "$DEBS"/*.deb
  say "downloading $(echo $pkgs | wc -w) packages: $(echo $pkgs)"
  (cd "$DEBS" && apt-get download -q $pkgs >/dev/null) || die "apt-get download failed"
  grep -qx '.pa/' .git/info/exclude 2>/dev/null || echo '.pa/' >>.git/info/exclude
  say "done: $(ls "$DEBS"/*.deb | wc -l) .debs, $(du -sh "$DEBS" | cut -f1) in $DEBS/"
}

unpack() {  # unpack DEB DIR: dpkg-deb, else Python (an ar archive holding data.tar.xz; ar/xz may be missing)
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; return; fi
  "$PY" - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1:]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as t:
            t.extractall(dest, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        break
    pos += 60 + size + size % 2
else:
    sys.exit(f"{deb}: no data.tar member")
PY
}

on_system() {  # on_system SONAME: does the image already have this library? (SYSLIBS: ldconfig -p)
  local d
  for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib64 /lib64 /usr/lib /lib; do
    [ -e "$d/$1" ] && return 0
  done
  grep -qF $'\t'"$1 (" <<<"$SYSLIBS"
}

write_env() {
  local core=$PREFIX/core/usr/lib/x86_64-linux-gnu
  cat >"$PREFIX/env" <<EOF
# written by scripts/carried_audio.sh setup; source it before using PulseAudio/PortAudio
export PATH="$PREFIX/core/usr/bin:\$PATH"
export LD_LIBRARY_PATH="$core:$core/pulseaudio:$MODS:$PREFIX/lib:$PREFIX/pa\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LIBRARY_PATH="$PREFIX/pa\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export ALSA_CONFIG_PATH="$PREFIX/alsa.conf"
export PULSE_DLPATH="$MODS" PULSE_RUNTIME_PATH="$PREFIX/run" PULSE_STATE_PATH="$PREFIX/run/state"
export PULSE_COOKIE="$PREFIX/run/cookie" PULSE_SERVER="unix:$PREFIX/run/native"
EOF
}

setup() {
  local deb name n f core
  ls "$DEBS"/*.deb >/dev/null 2>&1 || die "no $DEBS/*.deb in $PWD (run 'scripts/carried_audio.sh download' where apt works, carry $DEBS/)"
  [ -f "$PREFIX/run/pid" ] && kill "$(cat "$PREFIX/run/pid")" 2>/dev/null && sleep 0.5 || true
  rm -rf "$PREFIX/core" "$PREFIX/deps" "$PREFIX/lib" "$PREFIX/pa" "$PREFIX/run"
  mkdir -p "$PREFIX"/{core,deps,lib,pa}
  say "unpacking $(ls "$DEBS"/*.deb | wc -l) .debs into $PREFIX ($(command -v dpkg-deb >/dev/null && echo dpkg-deb || echo python))"
  for deb in "$DEBS"/*.deb; do
    name=$(basename "$deb"); name=${name%%_*}
    if [[ " ${CORE[*]} " == *" $name "* ]]; then unpack "$deb" "$PREFIX/core"; else unpack "$deb" "$PREFIX/deps"; fi \
      || die "cannot unpack $deb"
  done
  core=$PREFIX/core/usr/lib/x86_64-linux-gnu
  MODS=$(dirname "$(ls "$PREFIX"/core/usr/lib/pulse-*/modules/module-null-sink.so 2>/dev/null | head -1)")
  [ -x "$PREFIX/core/usr/bin/pulseaudio" ] && [ -f "$MODS/module-null-sink.so" ] && [ -f "$core/libportaudio.so.2" ] \
    && [ -f "$core/alsa-lib/libasound_module_pcm_pulse.so" ] || die "the .debs in $DEBS/ lack pulseaudio, libportaudio2 or libasound2-plugins"

  # Dependencies: only the libraries the image lacks go on LD_LIBRARY_PATH ($PREFIX/lib), so that
  # nothing else run under the env file (python, torch, git) gets our older or newer copy.
  n=0 SYSLIBS=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)
  for f in "$PREFIX"/deps/{usr/,}lib/x86_64-linux-gnu/*.so*; do
    [ -e "$f" ] || continue
    on_system "$(basename "$f")" || { ln -sf "$f" "$PREFIX/lib/"; n=$((n + 1)); }
  done
  say "libraries: core stack from the prefix, $n dependency files the image lacks from $PREFIX/lib"
  # PortAudio for find_library: the -lportaudio link name, alone in its folder (LIBRARY_PATH).
  ln -s "$core/libportaudio.so.2" "$PREFIX/pa/libportaudio.so"
  ln -s "$core/libportaudio.so.2" "$PREFIX/pa/libportaudio.so.2"

  # ALSA: only the pulse PCM/CTL, the plugins named by absolute path (alsa-lib takes a '/' path
  # as is), no /usr/share/alsa needed. default -> pulse too, as the pulse plugin's 99-pulse.conf does.
  cat >"$PREFIX/alsa.conf" <<EOF
pcm_type.pulse { lib "$core/alsa-lib/libasound_module_pcm_pulse.so" }
ctl_type.pulse { lib "$core/alsa-lib/libasound_module_ctl_pulse.so" }
pcm.pulse { type pulse hint { show on description "PulseAudio Sound Server" } }
ctl.pulse { type pulse }
pcm.!default { type pulse hint { show on description "Default ALSA Output (currently PulseAudio Sound Server)" } }
ctl.!default { type pulse }
EOF
  write_env
  # shellcheck disable=SC1091
  . "$PREFIX/env"

  "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("sounddevice") is None)' \
    || die "$PY cannot import sounddevice (install the .whl/ wheels first and put them on PYTHONPATH)"
  if ! "$PY" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("portaudio") is None)'; then
    if [ -w /etc/ld.so.conf.d ] && command -v ldconfig >/dev/null; then
      say "no compiler/linker for find_library: adding $PREFIX/pa (libportaudio only) to /etc/ld.so.conf.d"
      echo "$PREFIX/pa" >/etc/ld.so.conf.d/zz-rt-audio-portaudio.conf && ldconfig
    fi
    "$PY" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("portaudio") is None)' \
      || die "ctypes.util.find_library('portaudio') finds nothing (no gcc/cc/ld, no writable /etc/ld.so.conf.d)"
  fi

  # The daemon: no default.pa (-n), the two modules named, modules from the prefix; stays up.
  say "starting pulseaudio (log $PREFIX/run/pulse.log)"
  mkdir -p "$PREFIX/run" && chmod 700 "$PREFIX/run"
  pulseaudio --daemonize=yes -n --exit-idle-time=-1 --disallow-exit --use-pid-file=yes \
    --dl-search-path="$MODS" --log-target="file:$PREFIX/run/pulse.log" \
    -L "module-native-protocol-unix auth-anonymous=1" \
    -L "module-null-sink sink_name=$SINK rate=44100 channels=2" 2>>"$PREFIX/run/pulse.log" \
    || die "pulseaudio did not start: $(tail -n 3 "$PREFIX/run/pulse.log" 2>/dev/null | tr '\n' ' ')"
  for _ in $(seq 1 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
  pactl info >/dev/null 2>&1 || die "pactl cannot reach the daemon: $(pactl info 2>&1 | tail -n 1)"
  # The bench calls start_test_audio.sh: it must see this daemon and its sink (sets the default source).
  bash scripts/start_test_audio.sh >&2 || die "scripts/start_test_audio.sh failed under the carried setup"

  # End to end: PortAudio lists "pulse"; a 1.5-s tone played with paplay into rt_null is heard there.
  say "checking PortAudio device 'pulse' and paplay --device=$SINK"
  "$PY" - "$PREFIX/run/tone.wav" <<'PY' || die "the PortAudio/paplay check failed (see above)"
import array, math, struct, subprocess, sys, time, wave
import sounddevice as sd
names = [d["name"] for d in sd.query_devices()]
print(f"carried_audio: PortAudio devices: {names}", file=sys.stderr)
if "pulse" not in names:
    sys.exit("carried_audio: no PortAudio device named 'pulse'")
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(44100)
    w.writeframes(b"".join(struct.pack("<h", int(16000 * math.sin(2 * math.pi * 440 * i / 44100))) for i in range(66150)))
# record first: the monitor of an idle null sink delivers nothing until a stream plays into it
# (raw int16 stream: no numpy needed)
with sd.RawInputStream(samplerate=44100, channels=2, device="pulse", dtype="int16") as rec:
    time.sleep(0.5)
    play = subprocess.Popen(["paplay", "--device=rt_null", sys.argv[1]])
    data = bytes(rec.read(3 * 44100)[0])
if play.wait(timeout=30) != 0:
    sys.exit("carried_audio: paplay failed")
peak = max(map(abs, array.array("h", data))) / 32768
print(f"carried_audio: captured 3 s from 'pulse' while paplay played a tone: peak {peak:.3f}", file=sys.stderr)
if peak < 0.05:
    sys.exit("carried_audio: the tone played into rt_null did not reach the 'pulse' device")
PY
  say "ready; now run:  . $PREFIX/env"
  cat "$PREFIX/env"
}

stop() {
  [ -f "$PREFIX/run/pid" ] && kill "$(cat "$PREFIX/run/pid")" 2>/dev/null && say "pulseaudio stopped" || say "no daemon running"
}

case "${1:-}" in
  download | setup | stop) "$1" ;;
  *) echo "usage: $0 download|setup|stop" >&2; exit 2 ;;
esac
