# gdb script: captures the memory image v8_decode.rs decodes. Stops the app (app.js) at a large
# calloc (Buffer.alloc), or where V8_CAPTURE_BREAK says, lists the frames (function slot,
# BytecodeArray slot, raw bytecode offset slot, pc; the recorder keeps the JS ones), then, with
# the process still stopped, runs the recorder (the ignored `capture` test), which resolves them
# with leaktrace's own reader and saves every byte it read. V8_CAPTURE_TRUTH=1 then has V8 print
# its own stack trace (inlined frames included) on the app's stdout, to compare.
# usage: CAPTURE_CMD='path/to/v8_decode-* --ignored --exact capture' V8_CAPTURE_OUT=... \
#        gdb -p PID -batch -x capture.py   (run by capture.sh)
import gdb, os, struct
inf = gdb.selected_inferior()
def u64(a): return struct.unpack('<Q', bytes(inf.read_memory(a, 8)))[0]
gdb.execute('set pagination off')
gdb.execute('break ' + os.environ.get('V8_CAPTURE_BREAK',
                                      'calloc if (unsigned long)$rdi * (unsigned long)$rsi >= 65536'))
gdb.execute('continue', to_string=True)
fp = int(gdb.parse_and_eval('$rbp')) & (2**64 - 1)
frames = []
pc = 0  # the pc in the frame at fp: the return address its callee saved (unknown for the first)
for _ in range(64):
    if fp < 4096: break
    try:
        # fp-16 function, fp-32 BytecodeArray, fp-40 offset (checked by the recorder, not here)
        frames.append('%#x %#x %#x %#x' % (u64(fp - 16), u64(fp - 32), u64(fp - 40), pc))
        fp, pc = u64(fp), u64(fp + 8)
    except (gdb.MemoryError, OverflowError):
        break
path = os.environ['V8_CAPTURE_OUT'] + '.frames'
open(path, 'w').write('\n'.join(frames) + '\n')
gdb.execute('shell V8_CAPTURE_PID=%d V8_CAPTURE_FRAMES=%s %s' % (inf.pid, path, os.environ['CAPTURE_CMD']))
os.unlink(path)
if os.environ.get('V8_CAPTURE_TRUTH') == '1':
    gdb.execute('call (void)_ZN2v87Message22PrintCurrentStackTraceEPNS_7IsolateERSo('
                '((void*(*)())_ZN2v87Isolate10GetCurrentEv)(), &_ZSt4cout)')
    gdb.execute('call (int)fflush(0)')
gdb.execute('delete'); gdb.execute('detach')
