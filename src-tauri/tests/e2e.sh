#!/usr/bin/env bash
# End-to-end test of the real tray app binary. Run it inside an X server and a private session
# bus, as src-tauri/ci.sh does:
#
#   NO_AT_BRIDGE=1 xvfb-run -a -s '-screen 0 1280x800x24' dbus-run-session -- \
#     bash src-tauri/tests/e2e.sh target/debug/blockops-tray artifacts/tray
#
# It starts dunst (the notification daemon), dbus-monitor (counts Notify calls), trayer (an
# XEmbed tray, so the icon and its menu can be clicked) and then the app with the demo backend.
# Prints one `ok`/`not ok` line per check and `# tray-e2e: N passed, M failed` at the end.
# Every wait is bounded; every process it starts is stopped by PID.
set -u
BIN=$(realpath "$1")
OUT=$(realpath -m "${2:-artifacts/tray}")
mkdir -p "$OUT"
WORK=$(mktemp -d)
export HOME="$WORK/home" XDG_CONFIG_HOME="$WORK/home/.config" NO_AT_BRIDGE=1
mkdir -p "$HOME"
IM=/usr/bin # Debian's ImageMagick, not a stand-in earlier on PATH

passed=0
failed=0
pids=()
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1${2:+: $2}"; }
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then ok "$name"; else not_ok "$name"; fi
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  cp "$WORK"/*.log "$OUT"/ 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
healthy() { curl -sf "http://127.0.0.1:$1/health" >/dev/null; }
window_id() { xdotool search --onlyvisible --name '^blockops$' 2>/dev/null | head -n 1; }
has_window() { [ -n "$(window_id)" ]; }
notifications() { grep -c "string \"$1" "$WORK/notify.log"; }
# exits_within SECONDS PID: waits for PID to end; sets $rc to its exit status.
exits_within() {
  local deadline=$((SECONDS + $1))
  while kill -0 "$2" 2>/dev/null; do
    [ "$SECONDS" -ge "$deadline" ] && { rc=timeout; return 1; }
    sleep 0.2
  done
  wait "$2"; rc=$?
  return 0
}
launch() { # launch LOG ENV...: starts the app in the background; its PID is in $app
  local log=$1; shift
  env RUST_LOG=info BLOCKOPS_CONFIG="$WORK/config.toml" BLOCKOPS_LOG_FILE="$WORK/traffic.jsonl" \
    MEMORY_CRITICAL_PERCENT=99.9 "$@" "$BIN" >"$WORK/$log" 2>&1 &
  app=$!
}

# --- the desktop: notification listener and daemon, tray ---------------------------------------
dbus-monitor --session "type='method_call',interface='org.freedesktop.Notifications',member='Notify'" \
  >"$WORK/notify.log" 2>&1 &
pids+=($!)
dunst >"$WORK/dunst.log" 2>&1 &
pids+=($!)
trayer --edge top --align right --widthtype request --height 32 --SetDockType false \
  --transparent false --tint 0x333333 >"$WORK/trayer.log" 2>&1 &
pids+=($!)
# A marker notification proves the listener and the daemon are both up before the app starts.
wait_for 10 notify-send -t 1000 e2e-ready && wait_for 10 grep -q 'string "e2e-ready' "$WORK/notify.log" \
  || { echo "tray-e2e: cannot set up the notification listener"; cat "$WORK"/*.log; exit 1; }

# --- 1. launch with the demo backend, memory warning at 1% --------------------------------------
PORT=$(free_port)
launch app1.log PORT="$PORT" BLOCKOPS_DEMO=1 MEMORY_WARN_PERCENT=1 MEMORY_POLL_SECS=1
APP1=$app
check "the proxy answers /health on PORT" wait_for 30 healthy "$PORT"
check "only the tray at launch: no window" bash -c "! xdotool search --onlyvisible --name '^blockops\$'"

# --- 2. a second launch focuses the first one's window and exits 0 ------------------------------
launch app2.log PORT="$PORT" BLOCKOPS_DEMO=1
if exits_within 20 "$app"; then
  check "a second launch exits 0 (got $rc)" [ "$rc" = 0 ]
else
  kill "$app" 2>/dev/null; not_ok "a second launch exits" "still running after 20 s"
fi
check "the second launch opened the dashboard window" wait_for 20 has_window
WID=$(window_id)
if [ -n "$WID" ]; then
  geometry=$(xwininfo -id "$WID" | awk '/Width:/ {w=$2} /Height:/ {h=$2} END {print w "x" h}')
  check "the window is 420x640 (got $geometry)" [ "$geometry" = 420x640 ]
fi

# --- settings changed as the dashboard does (PATCH) apply live and persist in the config file ---
patched=$(curl -s -X PATCH -H 'content-type: application/json' -d '{"max_concurrent":4}' \
  "http://127.0.0.1:$PORT/admin/api/config")
live_max=$(curl -s "http://127.0.0.1:$PORT/admin/api/config" | jq -r '.max_concurrent')
check "a settings change applies live (max_concurrent $live_max)" [ "$live_max" = 4 ]
check "and is saved in the shared config file" grep -qx 'max_concurrent = 4' "$WORK/config.toml"
[ "$live_max" = 4 ] || echo "# PATCH answered: $patched"

# --- 3. the window shows live data: it changes when a request goes through ---------------------
# The page's body below its header (the header has a ticking uptime). Pixels that change while
# idle (charts scrolling) are measured first; the request must change far more than that.
shot() { "$IM/import" -display "$DISPLAY" -window "$WID" "$1" 2>/dev/null; }
body_of() { "$IM/convert" "$1" -crop 420x500+0+140 +repage "$2" 2>/dev/null; }
changed_pixels() { "$IM/compare" -fuzz 5% -metric AE "$1" "$2" null: 2>&1 | cut -d' ' -f1 | cut -d. -f1; }
rendered() { # the page has drawn text, not a blank surface
  shot "$WORK/probe.png" && [ "$("$IM/identify" -format %k "$WORK/probe.png")" -gt 50 ]
}
if [ -n "$WID" ]; then
  check "the dashboard page renders in the window" wait_for 30 rendered
  sleep 2 # let the first snapshot's numbers settle
  shot "$WORK/idle1.png"; sleep 1.5; shot "$WORK/idle2.png"
  body_of "$WORK/idle1.png" "$WORK/b1.png"; body_of "$WORK/idle2.png" "$WORK/b2.png"
  noise=$(changed_pixels "$WORK/b1.png" "$WORK/b2.png")
  cp "$WORK/idle2.png" "$OUT/dashboard-idle.png"
  body='{"model":"demo","stream":false,"messages":[{"role":"user","content":"What is the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}'
  reply=$(curl -s --max-time 60 -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$PORT/v1/chat/completions")
  check "a chat request through the proxy gets structured tool_calls" \
    bash -c 'jq -e ".choices[0].message.tool_calls[0].function.name == \"get_weather\"" <<<"$1" >/dev/null' _ "$reply"
  live() {
    shot "$WORK/after.png" && body_of "$WORK/after.png" "$WORK/b3.png" || return 1
    changed=$(changed_pixels "$WORK/b2.png" "$WORK/b3.png")
    [ "${changed:-0}" -gt $((3 * ${noise:-0} + 300)) ]
  }
  changed=0
  if wait_for 15 live; then
    ok "the dashboard window shows the request live ($changed pixels changed, idle noise $noise)"
  else
    not_ok "the dashboard window shows the request live" "$changed pixels changed, idle noise $noise"
  fi
  shot "$OUT/dashboard.png"
fi

# --- closing the window hides it; Open Dashboard in the tray menu shows it again ---------------
# WM_DELETE_WINDOW, what a window manager's close button sends (there is no window manager here).
close_window() {
  /usr/bin/python3 - "$1" <<'PY'
import sys
from Xlib import X, display, protocol
d = display.Display()
w = d.create_resource_object("window", int(sys.argv[1]))
protocols, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
w.send_event(protocol.event.ClientMessage(window=w, client_type=protocols,
             data=(32, [delete, X.CurrentTime, 0, 0, 0])))
d.flush()
PY
}
tray_icon() { xdotool search --onlyvisible --classname 'tray-icon tray app main' 2>/dev/null | head -n 1; }
open_tray_menu() { # right click on the icon (the AppIndicator XEmbed fallback opens its menu so)
  local icon
  icon=$(tray_icon)
  [ -n "$icon" ] || return 1
  eval "$(xdotool getwindowgeometry --shell "$icon")"
  xdotool mousemove $((X + WIDTH / 2)) $((Y + HEIGHT / 2)) click 3
  sleep 1
}
no_window() { ! has_window; }
if [ -n "$WID" ]; then
  close_window "$WID"
  check "closing the window hides it" wait_for 10 no_window
  check "and the app keeps running" healthy "$PORT"
  # Down from the top skips the status line (disabled): Open Dashboard.
  open_tray_menu && xdotool key Down Return
  check "Open Dashboard in the tray menu shows it again" wait_for 10 has_window
  WID=$(window_id)
fi

# --- 4. memory at or above 1%: exactly one notification, never a storm --------------------------
check "a memory-pressure notification arrives" wait_for 15 grep -q 'string "Memory pressure' "$WORK/notify.log"
sleep 4 # four more samples at MEMORY_POLL_SECS=1: none may notify again
n=$(notifications "Memory pressure")
check "exactly one memory notification (got $n)" [ "$n" = 1 ]
"$IM/import" -display "$DISPLAY" -window root "$OUT/desktop.png" 2>/dev/null

# --- backend unreachable, then back: one notification each ---------------------------------------
patch() { curl -s -X PATCH -H 'content-type: application/json' -d "$1" "http://127.0.0.1:$PORT/admin/api/config" >/dev/null; }
demo_url=$(curl -s "http://127.0.0.1:$PORT/admin/api/config" | jq -r '.backend_url')
patch '{"backend_url":"http://127.0.0.1:9"}'
check "an unreachable backend is notified by URL" \
  wait_for 20 grep -q 'string "Backend unreachable: http://127.0.0.1:9"' "$WORK/notify.log"
patch "{\"backend_url\":\"$demo_url\"}"
check "its return is notified" wait_for 20 grep -q "string \"Backend is back: $demo_url\"" "$WORK/notify.log"
n=$(notifications "Backend unreachable")
check "one notification per outage (got $n)" [ "$n" = 1 ]

# A streaming request still running when Quit is chosen: it must finish, and be in the log.
busy() { [ "$(curl -s "http://127.0.0.1:$PORT/admin/api/status" | jq -r '.slots.busy')" -ge 1 ]; }
stream='{"model":"demo","stream":true,"messages":[{"role":"user","content":"Quit while this streams: the weather in Oslo?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}'
curl -sN --max-time 60 -H 'content-type: application/json' -d "$stream" \
  "http://127.0.0.1:$PORT/v1/chat/completions" >"$WORK/inflight.txt" 2>&1 &
INFLIGHT=$!
check "a streaming request is in flight before Quit" wait_for 15 busy

# --- 5. the tray menu, then Quit from it ---------------------------------------------------------
how=SIGTERM
if open_tray_menu; then
  "$IM/import" -display "$DISPLAY" -window root "$WORK/menu-full.png" 2>/dev/null
  "$IM/convert" "$WORK/menu-full.png" -crop 340x220+940+0 +repage "$OUT/tray-menu.png" 2>/dev/null
  # The menu has the keyboard: Up from the top wraps to the last item, Quit.
  xdotool key Up Return
  exits_within 30 "$APP1" && how=menu
  check "Quit from the tray menu ends the app" [ "$how" = menu ]
else
  not_ok "Quit from the tray menu" "no tray host (trayer) running"
fi
if [ "$how" != menu ]; then
  kill -TERM "$APP1" 2>/dev/null
  exits_within 30 "$APP1"
fi
check "the app exits 0 (got $rc, by $how)" [ "$rc" = 0 ]
wait "$INFLIGHT"
check "the request in flight at Quit finished" grep -q 'data: \[DONE\]' "$WORK/inflight.txt"
check "the traffic log was flushed at exit (it has that request)" grep -q 'Oslo' "$WORK/traffic.jsonl"
check "the port is free after exit" bash -c "! curl -sf http://127.0.0.1:$PORT/health"

# --- 6. port taken at start: shown in the window and notified, then SIGTERM exits 0 ------------
python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen()
open(sys.argv[1],"w").write(str(s.getsockname()[1])); time.sleep(120)' "$WORK/taken-port" &
BLOCKER=$!
pids+=($BLOCKER)
wait_for 10 test -s "$WORK/taken-port"
PORT=$(cat "$WORK/taken-port")
launch app3.log PORT="$PORT"
APP3=$app
check "a taken port is notified" wait_for 20 grep -q 'string "Not running\|already in use' "$WORK/notify.log"
check "a taken port opens the window with the error" wait_for 20 has_window
WID=$(window_id)
[ -n "$WID" ] && { sleep 1; shot "$OUT/startup-error.png"; }
check "the app keeps running (the tray offers Quit)" kill -0 "$APP3"
kill -TERM "$APP3"
exits_within 30 "$APP3"
check "SIGTERM exits 0 (got $rc)" [ "$rc" = 0 ]
kill "$BLOCKER" 2>/dev/null

# --- 7. SIGINT does the same ---------------------------------------------------------------------
PORT=$(free_port)
launch app4.log PORT="$PORT" BLOCKOPS_DEMO=1
wait_for 30 healthy "$PORT"
next_max=$(curl -s "http://127.0.0.1:$PORT/admin/api/config" | jq -r '.max_concurrent')
check "the next launch starts with the saved setting (max_concurrent $next_max)" [ "$next_max" = 4 ]
kill -INT "$app"
exits_within 30 "$app"
check "SIGINT exits 0 (got $rc)" [ "$rc" = 0 ]

# --- 8. several backends: a Backends submenu with one line each, live -----------------------------
# The menu's labels are read where the desktop reads them: the dbusmenu the AppIndicator exports
# on the session bus (com.canonical.dbusmenu GetLayout), on the app's own connection.
bus() { gdbus call --session "$@" 2>/dev/null; }
menu_service() { # menu_service PID: that process's bus name and its menu's path, as "NAME PATH"
  local n path
  for n in $(bus --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
    --method org.freedesktop.DBus.ListNames | grep -oE ':[0-9]+\.[0-9]+'); do
    bus --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
      --method org.freedesktop.DBus.GetConnectionUnixProcessID "$n" | grep -q "uint32 $1," || continue
    path=$(gdbus introspect --session --dest "$n" --object-path / --recurse 2>/dev/null \
      | grep -oE '/org/ayatana/NotificationItem/[^ ]+/Menu' | head -n 1)
    [ -n "$path" ] && { echo "$n $path"; return 0; }
  done
  return 1
}
menu_labels() { # menu_labels PID: every label of its tray menu, one a line, in $WORK/labels.txt
  local svc
  svc=$(menu_service "$1") || return 1
  bus --dest "${svc% *}" --object-path "${svc#* }" --method com.canonical.dbusmenu.GetLayout -- 0 -1 "['label']" \
    | grep -oE "'label': <'[^']*'>" | sed -E "s/^'label': <'(.*)'>$/\1/" >"$WORK/labels.txt"
  [ -s "$WORK/labels.txt" ]
}
admin() { # admin METHOD NAME [BODY]: prints the HTTP status
  curl -s -o /dev/null -w '%{http_code}' -X "$1" -H 'content-type: application/json' ${3:+-d "$3"} \
    "http://127.0.0.1:$PORT/admin/api/backends/$2"
}
labels_match() { # labels_match PID PATTERN...: the menu has a label matching each pattern (grep -E)
  local pid=$1 p; shift
  menu_labels "$pid" || return 1
  for p in "$@"; do grep -qxE -- "$p" "$WORK/labels.txt" || return 1; done
}
PORT=$(free_port)
launch app5.log PORT="$PORT" BLOCKOPS_DEMO=1 BLOCKOPS_CONFIG="$WORK/multi.toml"
APP5=$app
check "the app starts again with the demo backend" wait_for 30 healthy "$PORT"
check "its tray menu is readable on the session bus" wait_for 20 labels_match "$APP5" '.*· Backend up' 'Quit'
check "one backend: no Backends submenu" bash -c '! grep -qx Backends "$1"' _ "$WORK/labels.txt"

code=$(admin PUT small '{"url":"http://127.0.0.1:9","models":["small"]}')
check "a second backend, down, is added at run time (PUT: $code)" [ "$code" = 200 ]
check "the Backends submenu shows each backend with its state" \
  wait_for 20 labels_match "$APP5" 'Backends' 'default — up · 0/3 busy' 'small — down'
check "the status line names the backend that is down" labels_match "$APP5" '.*· small down'
cp "$WORK/labels.txt" "$OUT/menu-two-backends.txt"
check "its outage is notified by name" \
  wait_for 20 grep -q 'string "Backend "small" unreachable: http://127.0.0.1:9"' "$WORK/notify.log"
# The submenu as the user sees it: the menu opened, Down to Backends (the status line is
# disabled), Right into the submenu.
if open_tray_menu; then
  xdotool key Down Right
  sleep 1
  "$IM/import" -display "$DISPLAY" -window root "$WORK/menu-backends-full.png" 2>/dev/null
  "$IM/convert" "$WORK/menu-backends-full.png" -crop 640x260+640+0 +repage "$OUT/tray-menu-backends.png" 2>/dev/null
  xdotool key Escape Escape
fi

demo_url=$(curl -s "http://127.0.0.1:$PORT/admin/api/backends" | jq -r '.[0].url')
code=$(admin PUT small "{\"url\":\"$demo_url\",\"models\":[\"small\"],\"max_concurrent\":2}")
check "the same backend pointed at a live server (PUT: $code)" [ "$code" = 200 ]
check "its line changes in place" \
  wait_for 20 labels_match "$APP5" 'default — up · 0/3 busy' 'small — up · 0/2 busy' '.*· Backends up'
check "its return is notified by name" \
  wait_for 20 grep -q "string \"Backend \"small\" is back: $demo_url\"" "$WORK/notify.log"

code=$(admin DELETE small)
check "the second backend is removed at run time (DELETE: $code)" [ "$code" = 200 ]
no_submenu() { labels_match "$APP5" 'Quit' && ! grep -qE '^(Backends|small — .*)$' "$WORK/labels.txt"; }
check "one backend again: the Backends submenu is gone" wait_for 20 no_submenu
kill -TERM "$APP5"
exits_within 30 "$APP5"
check "SIGTERM exits 0 (got $rc)" [ "$rc" = 0 ]

echo "# tray-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
