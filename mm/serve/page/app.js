// The page of the mm inference server: reads /info, posts the form to /predict, draws the answer.
"use strict";

const $ = (id) => document.getElementById(id);
let explain = false; // a classification model from a run folder answers per-modality contributions
const keyHeader = () => ($("api-key").value ? { "X-API-Key": $("api-key").value } : {});

async function loadInfo() {
  const r = await fetch("/info", { headers: keyHeader() });
  if (r.status === 401) { $("model-id").textContent = "(enter the API key)"; return; }
  if (!r.ok) { $("model-id").textContent = "(not ready)"; setTimeout(loadInfo, 1000); return; }
  const info = await r.json();
  $("model-id").textContent = info.model;
  explain = info.head === "classification" && info.kind === "pytorch";
  for (const m of ["text", "image", "audio"]) $(m + "-row").hidden = !info.modalities.includes(m);
  $("about").textContent = `This model takes ${info.modalities.join(", ")} (${info.head}); ` +
    "a modality left out is read as missing.";
}

function bars(target, values, top) {
  target.replaceChildren();
  const max = Math.max(...Object.values(values).map(Math.abs), 1e-9);
  for (const [name, v] of Object.entries(values)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === top ? " top" : "");
    row.dataset.name = name;
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    row.querySelector(".name").textContent = name;
    row.querySelector(".fill").style.width = `${(100 * Math.abs(v)) / max}%`;
    row.querySelector(".fill").style.display = "block";
    row.querySelector(".value").textContent = v.toFixed(3);
    target.appendChild(row);
  }
}

function show(answer) {
  $("result").hidden = false;
  $("tags").replaceChildren();
  $("chart").replaceChildren();
  if (answer.tags) {
    $("label").textContent = answer.tags.join(" ");
    answer.tokens.forEach((w, i) => {
      const li = document.createElement("li");
      li.textContent = `${w}: ${answer.tags[i]}`;
      $("tags").appendChild(li);
    });
  } else if (answer.probabilities) {
    const label = Array.isArray(answer.label) ? answer.label.join(", ") : String(answer.label);
    $("label").textContent = label;
    bars($("chart"), answer.probabilities, Array.isArray(answer.label) ? null : label);
  } else {
    $("label").textContent = String(answer.value);
  }
  const missing = answer.missing && answer.missing.length ? `; read as missing: ${answer.missing.join(", ")}` : "";
  $("meta").textContent = `model ${answer.model}, ${answer.latency_ms.toFixed(1)} ms, batch of ${answer.batch_size}${missing}`;
  // The slot for per-modality contributions (mm/explain): drawn when the server sends them.
  $("contributions").hidden = !answer.contributions;
  if (answer.contributions) {
    const c = answer.contributions;
    bars($("contrib-chart"), c.modalities, null);
    $("contrib-note").textContent = `${c.measure}: ${c.baseline.toFixed(3)} with every modality missing, ` +
      `${c.output.toFixed(3)} with what was sent; each bar is a modality's exact Shapley share of the change.`;
  }
}

$("predict-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").hidden = true;
  const form = new FormData();
  if (!$("text-row").hidden && $("text").value.trim()) form.append("text", $("text").value);
  for (const m of ["image", "audio"]) {
    if (!$(m + "-row").hidden && $(m).files.length) form.append(m, $(m).files[0]);
  }
  $("submit").disabled = true;
  try {
    const r = await fetch(explain ? "/predict?explain=true" : "/predict", { method: "POST", body: form, headers: keyHeader() });
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) throw new Error(`${r.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`);
    show(body);
  } catch (err) {
    $("result").hidden = true;
    $("error").textContent = err.message;
    $("error").hidden = false;
  } finally {
    $("submit").disabled = false;
  }
});

$("api-key").addEventListener("change", loadInfo);
loadInfo();
