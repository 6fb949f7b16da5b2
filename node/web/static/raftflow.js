// raftflow's pages: live updates and the buttons' requests. No framework, no build step.
//
// Live: every element with data-live="NAME" is re-read from the page's own URL every
// 0.75 s (so a change shows within a second) and swapped in place when it changed
// (then a "raftflow:live" event fires on document). Buttons send JSON to the node's
// /ui/ endpoints with the X-Raftflow-CSRF header (a cross-site form cannot set it);
// the server checks the caller's role again, whatever the page showed.
(function () {
  "use strict";
  var LIVE_PERIOD_MS = 750;
  var notice = document.getElementById("notice");

  function say(message, kind, link) {
    if (!notice) return;
    notice.textContent = message;
    if (link) {
      var a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      notice.appendChild(document.createTextNode(" "));
      notice.appendChild(a);
    }
    notice.className = "notice " + (kind || "info");
    notice.hidden = false;
  }

  function quiet(kind) {
    if (notice && !notice.hidden && notice.classList.contains(kind)) notice.hidden = true;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Raftflow-CSRF": "1"},
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (!response.ok) {
          throw new Error(answer.detail || ("the node answered HTTP " + response.status));
        }
        return answer;
      });
    });
  }

  function seg(text) { return encodeURIComponent(text); }

  // ------------------------------------------------------------------ live
  var liveParts = document.querySelectorAll("[data-live]");
  var refreshing = false;

  function refresh() {
    if (refreshing || !liveParts.length) return Promise.resolve();
    refreshing = true;
    return fetch(location.href, {credentials: "same-origin"})
      .then(function (response) {
        if (response.redirected && new URL(response.url).pathname === "/login") {
          say("Your session has ended: log in again to see live updates.", "lost",
              {href: response.url, text: "Log in"});
          return;
        }
        return response.text().then(function (html) {
          if (!response.ok && response.status !== 404) {
            say("Node answered HTTP " + response.status + "; still trying.", "lost");
            return;
          }
          quiet("lost");
          var fresh = new DOMParser().parseFromString(html, "text/html");
          var changed = false;
          document.querySelectorAll("[data-live]").forEach(function (part) {
            var next = fresh.querySelector('[data-live="' + part.getAttribute("data-live") + '"]');
            // (a part whose field the user is in, e.g. an open run chooser, waits for the next round)
            var focused = document.activeElement;
            var busy = focused && focused.matches("input, select, textarea") && part.contains(focused);
            if (next && !busy && next.innerHTML !== part.innerHTML) {
              part.innerHTML = next.innerHTML;
              changed = true;
            }
          });
          if (changed) document.dispatchEvent(new CustomEvent("raftflow:live"));
        });
      })
      .catch(function () {
        say("This node does not answer; retrying. Any other node of the cluster serves the same pages.", "lost");
      })
      .finally(function () { refreshing = false; });
  }

  if (liveParts.length) {
    setInterval(function () { if (!document.hidden) refresh(); }, LIVE_PERIOD_MS);
  }
  window.raftflow = {refresh: refresh, post: post, say: say};

  // ------------------------------------------------------------------ trigger
  var dialog = document.getElementById("trigger-dialog");

  function openTrigger(dagId) {
    if (!dialog) return;
    dialog.setAttribute("data-dag-id", dagId);
    dialog.querySelector('[data-slot="dag-id"]').textContent = dagId;
    var error = dialog.querySelector('[data-slot="error"]');
    error.hidden = true;
    error.textContent = "";
    dialog.showModal();
    dialog.querySelector("textarea").focus();
  }

  function submitTrigger() {
    var dagId = dialog.getAttribute("data-dag-id");
    var conf = dialog.querySelector("textarea").value;
    var error = dialog.querySelector('[data-slot="error"]');
    var button = dialog.querySelector('[data-action="trigger-submit"]');
    button.disabled = true;
    post("/ui/dags/" + seg(dagId) + "/trigger", {conf: conf}).then(function (answer) {
      dialog.close();
      say("Triggered " + answer.run_id + (answer.dag_paused ? " (it waits: the DAG is paused)" : "") + ".",
          "ok", {href: answer.url, text: "Open the run"});
      if (document.getElementById("graph")) {
        var url = new URL(location.href);
        url.searchParams.set("run_id", answer.run_id);
        history.replaceState(null, "", url.toString());
      }
      refresh();
    }).catch(function (e) {
      error.textContent = e.message;
      error.hidden = false;
    }).finally(function () { button.disabled = false; });
  }

  if (dialog) {
    dialog.querySelector("form").addEventListener("submit", function (event) {
      event.preventDefault();
      submitTrigger();
    });
  }

  // ------------------------------------------------------------------ buttons
  function act(promise, done) {
    promise.then(function (answer) {
      say(done(answer), "ok");
      refresh();
    }).catch(function (e) { say(e.message, "error"); });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-action]");
    if (!button) return;
    var action = button.getAttribute("data-action");
    if (action === "trigger") {
      openTrigger(button.getAttribute("data-dag-id"));
    } else if (action === "trigger-cancel") {
      dialog.close();
    } else if (action === "pause") {
      var paused = button.getAttribute("data-paused") !== "true";
      var dagId = button.getAttribute("data-dag-id");
      act(post("/ui/dags/" + seg(dagId) + "/paused", {paused: paused}), function () {
        return dagId + (paused ? " is paused." : " is active.");
      });
    } else if (action === "cancel") {
      if (!confirm("Cancel this run? Its running attempts are killed.")) return;
      act(post(button.getAttribute("data-url"), {}), function (a) {
        return "Run cancelled (" + a.stopped_attempts + " attempt(s) stopped).";
      });
    } else if (action === "clear" || action === "mark") {
      var box = button.closest("[data-url-base]");
      var base = box.getAttribute("data-url-base");
      if (action === "clear") {
        var downstream = box.querySelector('[data-slot="downstream"]').checked;
        act(post(base + "/clear", {downstream: downstream}), function (a) {
          return "Cleared " + a.cleared.join(", ") + ".";
        });
      } else {
        var state = button.getAttribute("data-state");
        act(post(base + "/mark", {state: state}), function () { return "Marked " + state + "."; });
      }
    }
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches('[data-action="choose-run"]')) event.target.form.submit();
  });

  // ------------------------------------------------------------------ task log
  var logBox = document.getElementById("log");
  if (logBox) {
    var status = document.getElementById("log-status");
    var shownAttempt = document.getElementById("log-attempt");
    var next = 0;
    var attempt = 0;
    var busy = false;
    var idle = false;      // the task is not running and the last poll brought nothing new
    var following = function () {
      var flag = document.getElementById("task-following");
      return flag ? flag.getAttribute("data-following") === "true" : false;
    };
    // The newest attempt the page lists (its live refresh adds one after a clear or retry):
    // a quiet log wakes up for it even if the attempt ran and ended between two refreshes
    // of the "following" flag.
    var newestListed = function () {
      var newest = 0;
      document.querySelectorAll(".attempts [data-attempt]").forEach(function (link) {
        newest = Math.max(newest, parseInt(link.getAttribute("data-attempt"), 10) || 0);
      });
      return newest;
    };
    var poll = function () {
      if (busy || (idle && !following() && newestListed() <= attempt)) return;
      busy = true;
      var atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 40;
      fetch(logBox.getAttribute("data-url") + "&from=" + next, {credentials: "same-origin"})
        .then(function (response) {
          return response.json().then(function (answer) {
            if (!response.ok) throw new Error(answer.detail || ("HTTP " + response.status));
            return answer;
          });
        })
        .then(function (answer) {
          if (attempt && answer.attempt !== attempt) {
            // a new attempt began (the page follows the latest): show its log from the start
            logBox.textContent = "";
            next = 0;
            attempt = answer.attempt;
            if (shownAttempt) shownAttempt.textContent = attempt;
            return;
          }
          attempt = answer.attempt;
          if (answer.text) logBox.appendChild(document.createTextNode(answer.text));
          next = answer.next;
          if (atBottom) logBox.scrollTop = logBox.scrollHeight;
          var live = following();
          logBox.setAttribute("data-following", live ? "true" : "false");
          status.textContent = "from node " + (answer.node || "?") + (live ? " · following" : "");
          idle = !live && !answer.text;
        })
        .catch(function (e) { status.textContent = "log: " + e.message; })
        .finally(function () { busy = false; });
    };
    poll();
    setInterval(poll, LIVE_PERIOD_MS);
  }
})();
