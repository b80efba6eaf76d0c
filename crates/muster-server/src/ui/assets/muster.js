// muster's web UI script: shows times in the browser's zone, keeps pages current from the
// server's event stream, follows a task's logs and asks before destructive actions. Pages work
// without it; it only adds liveness.
(function () {
  "use strict";

  var absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  // Tables show the short form; the year only when it is not this one.
  var thisYear = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  var otherYear = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  function brief(date) {
    return (date.getFullYear() === new Date().getFullYear() ? thisYear : otherYear).format(date);
  }
  var timeOfDay = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

  function ago(date) {
    var s = Math.round((Date.now() - date.getTime()) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return brief(date);
  }

  // Server-rendered <time datetime="...Z"> elements show UTC; show them in the local zone.
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      el.title = absolute.format(date);
      if (el.hasAttribute("data-relative")) {
        el.textContent = ago(date);
      } else if (el.getAttribute("data-format") === "time") {
        el.textContent = timeOfDay.format(date);
      } else {
        el.textContent = brief(date);
      }
    });
  }

  function refreshRelative() {
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (!isNaN(date.getTime())) el.textContent = ago(date);
    });
  }

  // ---- live regions: on a relevant event, fetch this page again and swap its data-live parts.
  var body = document.body;
  var topics = (body.getAttribute("data-events") || "").split(" ").filter(Boolean);
  var onlyTask = body.getAttribute("data-task");
  var status = document.getElementById("live-status");
  var timer = null;
  var busy = false;
  var again = false;
  var lastRefresh = 0;
  // At most one refetch per second whatever the event rate; the last event always leads to one.
  var MIN_INTERVAL = 1000;

  function setStatus(state, text) {
    if (!status) return;
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function schedule() {
    if (timer) return;
    var wait = Math.max(150, lastRefresh + MIN_INTERVAL - Date.now());
    timer = setTimeout(function () {
      timer = null;
      refresh();
    }, wait);
  }

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    lastRefresh = Date.now();
    fetch(location.href, { credentials: "same-origin" })
      .then(function (response) {
        // A redirect means the session ended (to the login page): show that, not stale data.
        if (response.redirected || response.status === 401 || response.status === 403) {
          location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        fresh.querySelectorAll("[data-live][id]").forEach(function (region) {
          var old = document.getElementById(region.id);
          if (!old) return;
          var adopted = document.importNode(region, true);
          old.replaceWith(adopted);
          localise(adopted);
        });
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          schedule();
        }
      });
  }

  function concernsPage(event) {
    if (!onlyTask) return true;
    try {
      return JSON.parse(event.data).task_id === onlyTask;
    } catch (e) {
      return true;
    }
  }

  if (topics.length && window.EventSource) {
    var events = new EventSource("/api/v1/events");
    events.onopen = function () { setStatus("open", "live"); };
    events.onerror = function () {
      if (events.readyState === EventSource.CLOSED) setStatus("closed", "offline");
      else setStatus("connecting", "reconnecting");
    };
    topics.forEach(function (topic) {
      events.addEventListener(topic, function (event) {
        if (!concernsPage(event)) return;
        schedule();
        if (onlyTask) {
          var state = "";
          try { state = JSON.parse(event.data).state; } catch (e) {}
          // A retried task runs again: follow its new attempt's lines.
          if (state === "queued" || state === "assigned" || state === "running") followLogs();
        }
      });
    });
    // Heartbeats are not events, yet load and "last heartbeat" move; pages showing agents
    // refresh now and then too.
    if (topics.indexOf("agent") >= 0) setInterval(schedule, 30000);
    // The server could not replay what we missed (it restarted, or we fell behind).
    events.addEventListener("resync", schedule);
  }

  // ---- a task's logs: follow the log stream from the last line shown. The stream ends with
  // the task; a retry starts it again (see the task events below).
  var log = document.getElementById("log");
  var logStatus = document.getElementById("log-status");
  var lines = null;

  function appendLine(line) {
    if (log.querySelector('[data-id="' + line.id + '"]')) return;
    var empty = document.getElementById("log-empty");
    if (empty) empty.remove();
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    var item = document.createElement("li");
    item.className = "line " + line.stream;
    item.setAttribute("data-id", line.id);
    var time = document.createElement("time");
    time.setAttribute("datetime", line.ts);
    time.setAttribute("data-format", "time");
    var attempt = document.createElement("span");
    attempt.className = "attempt";
    attempt.textContent = "#" + line.attempt;
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    item.append(time, attempt, text);
    log.append(item);
    localise(item);
    log.setAttribute("data-after", line.id);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function followLogs() {
    if (!log || !log.getAttribute("data-follow") || !window.EventSource || lines) return;
    var url = log.getAttribute("data-follow") + "?after=" + encodeURIComponent(log.getAttribute("data-after") || "0");
    lines = new EventSource(url);
    lines.addEventListener("open", function () {
      if (logStatus && logStatus.textContent.indexOf("ended") === 0) logStatus.textContent = "following live";
    });
    lines.addEventListener("line", function (event) { appendLine(JSON.parse(event.data)); });
    lines.addEventListener("end", function (event) {
      lines.close();
      lines = null;
      if (logStatus) {
        var state = "";
        try { state = JSON.parse(event.data).state; } catch (e) {}
        logStatus.textContent = state ? "ended: " + state : "ended";
      }
      schedule();
    });
    lines.onerror = function () {
      if (lines && lines.readyState === EventSource.CLOSED) {
        lines = null;
        if (logStatus) logStatus.textContent = "not following";
      }
    };
  }

  followLogs();

  // ---- forms that remove something ask first.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  localise(document);
  setInterval(refreshRelative, 5000);
})();
