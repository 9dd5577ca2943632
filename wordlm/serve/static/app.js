"use strict";
// The page's whole logic: ask /v1/next-words while the person types (debounced; a newer keystroke
// aborts the older request, so a slow answer never overwrites a newer one), and /v1/completions when
// they press Generate.

const SHOWN = 8; // suggestions on screen
const DEBOUNCE_MS = 150;
const EOS = "<eos>";
const UNK = "<unk>";

const $ = (id) => document.getElementById(id);
const text = $("text");
const box = $("suggestions");
const statusLine = $("status");

let timer = null;
let pending = null; // AbortController of the next-words request in flight
let shown = []; // the words on the buttons, for Tab

function setStatus(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

async function post(path, body, signal) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
  return data;
}

// "the old ma" -> context "the old ", partial "ma": while a word is being typed, the suggestions are
// the likely next words that start with it.
function splitWord(value) {
  const partial = value.match(/\S*$/)[0];
  return { context: value.slice(0, value.length - partial.length), partial };
}

// The chosen word replaces the word being typed now (which may be longer than when it was suggested).
function accept(word) {
  const { context } = splitWord(text.value);
  text.value = context + (word === EOS ? "\n" : word + " ");
  text.focus();
  schedule(0);
}

function render(words) {
  shown = words.map((w) => w.word);
  box.replaceChildren(
    ...words.map((w) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "suggestion";
      button.textContent = w.word === EOS ? "↵" : w.word;
      const prob = document.createElement("small");
      prob.textContent = `${(100 * w.prob).toFixed(1)}%`;
      button.append(prob);
      button.addEventListener("click", () => accept(w.word));
      return button;
    }),
  );
}

async function suggest() {
  const { context, partial } = splitWord(text.value);
  if (pending) pending.abort();
  pending = new AbortController();
  try {
    const k = partial ? 100 : 2 * SHOWN; // room for the filters below
    const data = await post("/v1/next-words", { text: context, k }, pending.signal);
    const prefix = partial.toLowerCase();
    const words = data.words.filter(
      (w) => w.word !== UNK && (!partial || (w.word !== EOS && w.word.toLowerCase().startsWith(prefix))),
    );
    render(words.slice(0, SHOWN));
    if (statusLine.classList.contains("error")) setStatus(""); // the server answers again
  } catch (err) {
    if (err.name !== "AbortError") setStatus(err.message, true);
  }
}

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(suggest, delay);
}

async function generate(event) {
  event.preventDefault();
  const button = event.submitter;
  button.disabled = true;
  setStatus("generating…");
  try {
    const data = await post("/v1/completions", {
      prompt: text.value,
      max_tokens: Number($("words").value),
      temperature: Number($("temperature").value),
    });
    const choice = data.choices[0];
    text.value += choice.text;
    if (/\S$/.test(text.value)) text.value += " "; // ready for the next word's suggestions
    setStatus(`${data.usage.completion_tokens} words generated (finish: ${choice.finish_reason})`);
    schedule(0);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    button.disabled = false;
  }
}

text.addEventListener("input", () => schedule(DEBOUNCE_MS));
text.addEventListener("keydown", (event) => {
  if (event.key === "Tab" && shown.length) {
    event.preventDefault();
    accept(shown[0]);
  }
});
$("generate").addEventListener("submit", generate);

fetch("/health")
  .then((res) => res.json())
  .then((h) => ($("model").textContent = `model ${h.model} · engine ${h.engine}`))
  .catch(() => setStatus("the server does not answer", true));
schedule(0);
