"""libc calls and pointer casts for numba code that runs without the GIL.

The producers that must never wait for the interpreter (the stdin reader,
:mod:`rt_tagger.pipe_reader`; the microphone's PortAudio callback, :mod:`rt_tagger.mic_callback`)
are numba code. They call libc directly through these intrinsics; each symbol is resolved by name
when the code is loaded, so the compiled functions can be cached. Numba passes every argument as an
int64 (pointers as addresses); the result comes back sign-extended to int64.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "CLOCK_REALTIME",
    "CLOCK_MONOTONIC",
    "c_read",
    "c_write",
    "c_poll",
    "c_clock_gettime",
    "c_nanosleep",
    "c_errno",
    "now_ns",
    "as_pointer",
]

CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_PTR = ir.IntType(8).as_pointer()


def _libc(symbol: str, ret: ir.Type, params: list[ir.Type]):
    """An intrinsic that calls libc's ``symbol``."""
    signature = types.int64(*[types.int64] * len(params))

    def codegen(context, builder, sig, values):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params), symbol)
        cast = [
            builder.inttoptr(v, t) if t == _PTR else builder.trunc(v, t) if t.width < 64 else v
            for v, t in zip(values, params, strict=True)
        ]
        out = builder.call(fn, cast)
        return builder.sext(out, _I64) if ret.width < 64 else out

    if len(params) == 2:  # numba's intrinsics need their arguments spelt out

        def call(typingctx, a, b):
            return signature, codegen
    else:

        def call(typingctx, a, b, c):
            return signature, codegen

    return intrinsic(call)


c_read = _libc("read", _I64, [_I32, _PTR, _I64])
c_write = _libc("write", _I64, [_I32, _PTR, _I64])
c_poll = _libc("poll", _I32, [_PTR, _I64, _I32])
c_clock_gettime = _libc("clock_gettime", _I32, [_I32, _PTR])
c_nanosleep = _libc("nanosleep", _I32, [_PTR, _PTR])


@intrinsic
def c_errno(typingctx):
    """The calling thread's ``errno``."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32.as_pointer(), []), "__errno_location"
        )
        return builder.sext(builder.load(builder.call(fn, [])), _I64)

    return types.int64(), codegen


@njit(cache=True)
def now_ns(clock, ts):
    """``clock``'s time in nanoseconds; ``ts`` is a scratch int64[2] (a ``struct timespec``)."""
    c_clock_gettime(clock, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@intrinsic
def as_pointer(typingctx, addr, dtype):
    """``addr`` (an int64) as a typed pointer to ``dtype`` elements, for ``numba.carray``:
    ``carray(as_pointer(address, np.float32), (n,))`` views n float32 values at that address."""
    if not isinstance(addr, types.Integer) or not isinstance(dtype, (types.DType, types.NumberClass)):
        return None
    element = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
    pointer = types.CPointer(element)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(addr, dtype), codegen
