// The explorer page's script (as a running server serves it at GET /) run by Node.js over a
// minimal stand-in DOM, its fetch() calls going to that server: no browser is needed.
//
//   node explorer_harness.js BASE_URL [QUERY]      e.g. http://127.0.0.1:8000 "?user=42"
//
// Prints JSON: each element of the page by id (its text, its children's texts, hidden, value),
// the tags the script created and every text node it inserted. The stand-in has no HTML parser:
// innerHTML, outerHTML, insertAdjacentHTML and document.write throw, and so does inserting
// anything but a node, so a page that inserted a string as HTML fails here. Used by
// tests/serve/test_explorer.py.
"use strict";
const vm = require("vm");

const created = [];  // tags of the elements the script created
const texts = [];  // the data of every text node the script created

class Text {
  constructor(data) {
    this.data = data;
  }
  get textContent() {
    return this.data;
  }
}

function htmlSink() {
  throw new Error("the page inserted HTML");
}

class Element {
  constructor(tag, id = null) {
    this.tagName = tag.toUpperCase();
    this.id = id;
    this.childNodes = [];
    this.attributes = {};
    this.listeners = {};
    this.hidden = false;
    this.value = "";
    this.checked = false;
  }
  appendChild(child) {
    checkNode(child);
    this.childNodes.push(child);
    return child;
  }
  replaceChildren(...children) {
    children.forEach(checkNode);
    this.childNodes = children;
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
  addEventListener(type, listener) {
    (this.listeners[type] ||= []).push(listener);
  }
  scrollIntoView() {}
  get textContent() {
    return this.childNodes.map((child) => child.textContent).join("");
  }
  set textContent(value) {
    this.childNodes = [new Text(String(value))];
  }
  set innerHTML(_) {
    htmlSink();
  }
  set outerHTML(_) {
    htmlSink();
  }
  insertAdjacentHTML() {
    htmlSink();
  }
}

function checkNode(child) {
  if (!(child instanceof Text || child instanceof Element)) {
    throw new Error(`not a node: ${JSON.stringify(child)}`);
  }
}

// The page's elements with an id, as its HTML declares them (value, checked, hidden).
function pageElements(html) {
  const elements = new Map();
  for (const [, tag, id, rest] of html.matchAll(/<(\w+) id="([^"]+)"([^>]*)>/g)) {
    const element = new Element(tag, id);
    element.value = (rest.match(/\bvalue="([^"]*)"/) || [null, ""])[1];
    element.checked = /\schecked\b/.test(rest);
    element.hidden = /\shidden\b/.test(rest);
    elements.set(id, element);
  }
  return elements;
}

async function main() {
  const [base, query = ""] = process.argv.slice(2);
  const html = await (await fetch(new URL("/", base))).text();
  const script = html.match(/<script>([\s\S]*?)<\/script>/)[1];
  const elements = pageElements(html);
  const document = {
    getElementById(id) {
      if (!elements.has(id)) throw new Error(`the page has no element #${id}`);
      return elements.get(id);
    },
    createElement(tag) {
      created.push(tag);
      return new Element(tag);
    },
    createTextNode(data) {
      texts.push(String(data));
      return new Text(String(data));
    },
    write: htmlSink,
  };
  const href = new URL(`/${query}`, base).href;
  const window = {
    location: {href, search: new URL(href).search},
    history: {replaceState() {}},
  };
  const context = vm.createContext({
    document,
    window,
    URL,
    URLSearchParams,
    console,
    fetch: (path, init) => fetch(new URL(path, base), init),
  });
  vm.runInContext(script, context);
  await vm.runInContext("started", context);
  const shown = {};
  for (const [id, element] of elements) {
    shown[id] = {
      text: element.textContent,
      children: element.childNodes.map((child) => child.textContent),
      hidden: element.hidden,
      value: element.value,
    };
  }
  console.log(JSON.stringify({shown, created: [...new Set(created)].sort(), texts}));
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
