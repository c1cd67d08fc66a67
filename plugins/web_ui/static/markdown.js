// Markdown for the assistant's replies: marked (GFM) -> DOMPurify -> DOM.
// Libraries are vendored (static/vendor/README.md): nothing is fetched from elsewhere.
//
// Raw HTML in a reply is shown as text, never parsed (a model quoting a script tag shows
// it); DOMPurify then cleans what marked produced, as a second line. Links open in a
// new tab without the opener or a referrer; javascript: and other unsafe URLs are
// dropped by DOMPurify; images are not rendered (the page's CSP would block remote
// ones anyway).
//
// A streamed reply is re-rendered block by block: renderMarkdown keeps each top-level
// block's source and its element, so a new delta re-renders only the blocks whose text
// changed (usually the last one), and app.js calls it at most once per animation frame.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import hljs from "./vendor/highlight.core.min.js";
import bash from "./vendor/hljs/bash.min.js";
import c from "./vendor/hljs/c.min.js";
import cpp from "./vendor/hljs/cpp.min.js";
import css from "./vendor/hljs/css.min.js";
import diff from "./vendor/hljs/diff.min.js";
import go from "./vendor/hljs/go.min.js";
import java from "./vendor/hljs/java.min.js";
import javascript from "./vendor/hljs/javascript.min.js";
import json from "./vendor/hljs/json.min.js";
import markdown from "./vendor/hljs/markdown.min.js";
import plaintext from "./vendor/hljs/plaintext.min.js";
import python from "./vendor/hljs/python.min.js";
import rust from "./vendor/hljs/rust.min.js";
import shell from "./vendor/hljs/shell.min.js";
import sql from "./vendor/hljs/sql.min.js";
import typescript from "./vendor/hljs/typescript.min.js";
import xml from "./vendor/hljs/xml.min.js";
import yaml from "./vendor/hljs/yaml.min.js";

const LANGUAGES = {
  bash, c, cpp, css, diff, go, java, javascript, json, markdown, plaintext, python, rust,
  shell, sql, typescript, xml, yaml,
};
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);
hljs.registerAliases(["sh", "zsh", "console"], { languageName: "bash" });
hljs.registerAliases(["js", "jsx", "mjs"], { languageName: "javascript" });
hljs.registerAliases(["ts", "tsx"], { languageName: "typescript" });
hljs.registerAliases(["py"], { languageName: "python" });
hljs.registerAliases(["html", "svg"], { languageName: "xml" });
hljs.registerAliases(["yml"], { languageName: "yaml" });
hljs.registerAliases(["text", "txt"], { languageName: "plaintext" });

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      return escapeHtml(text || href || "");
    },
    code({ text, lang }) {
      const language = ((lang || "").match(/^\S*/)[0] || "").toLowerCase();
      const known = language && hljs.getLanguage(language);
      const body = known
        ? hljs.highlight(text, { language, ignoreIllegals: true }).value
        : escapeHtml(text);
      const label = language ? ` data-language="${escapeHtml(language)}"` : "";
      const name = known ? ` language-${escapeHtml(language)}` : "";
      return `<pre${label}><code class="hljs${name}">${body}</code></pre>\n`;
    },
  },
});

const PURIFY = {
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "option",
    "video", "audio", "source", "picture", "svg", "math", "iframe", "object", "embed"],
  FORBID_ATTR: ["style", "srcset"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  }
});

// Copies text with the Clipboard API, or, where the page is not a secure context (plain
// http on a LAN address), with a hidden text area. Resolves to true when copied.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the text area
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  let done = false;
  try {
    done = document.execCommand("copy");
  } catch {
    done = false;
  }
  area.remove();
  return done;
}

function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code secondary small";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy this code");
    button.addEventListener("click", async () => {
      const code = pre.querySelector("code");
      const ok = await copyText(code ? code.textContent : pre.textContent);
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    pre.replaceWith(wrap);
    wrap.append(button, pre);
  }
}

function renderBlock(token, links) {
  const list = [token];
  list.links = links;
  const node = document.createElement("div");
  node.className = "md-block";
  node.append(DOMPurify.sanitize(marked.parser(list), PURIFY));
  addCopyButtons(node);
  return node;
}

const rendered = new WeakMap();  // container -> {blocks: [{raw, node}], links}

// Renders `source` into `container`, reusing the elements of blocks whose text is
// unchanged since the last call on the same container.
export function renderMarkdown(container, source) {
  const tokens = marked.lexer(source);
  const blocks = tokens.filter((token) => token.type !== "space" && token.type !== "def");
  const links = JSON.stringify(tokens.links || {});
  let memo = rendered.get(container);
  if (!memo || memo.links !== links) {
    container.replaceChildren();
    memo = { blocks: [], links };
    rendered.set(container, memo);
  }
  const cache = memo.blocks;
  blocks.forEach((token, index) => {
    const have = cache[index];
    if (have && have.raw === token.raw) return;
    const node = renderBlock(token, tokens.links);
    if (have) have.node.replaceWith(node);
    else container.append(node);
    cache[index] = { raw: token.raw, node };
  });
  for (const extra of cache.splice(blocks.length)) extra.node.remove();
}
