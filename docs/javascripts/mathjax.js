// MathJax 3 configuration for two kinds of pages:
//  - Markdown pages: pymdownx.arithmatex (generic: true) wraps math in <span|div class="arithmatex"> \( \) / \[ \];
//  - notebook pages (mkdocs-jupyter / nbconvert): math stays as raw $...$ / $$...$$ inside the rendered cells.
// So both delimiter styles are recognised, and only those two kinds of containers are typeset
// (code blocks and the rest of the page are left alone).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-MarkdownOutput|jp-RenderedLatex"
  }
};

// mkdocs-material's instant navigation swaps pages without a reload: typeset again on every page.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.startup && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
