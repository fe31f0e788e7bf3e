// MathJax 3 configuration. The site serves MathJax itself (javascripts/mathjax/, copied from the npm package by
// hooks/mathjax.py), so equations render without the network. Two kinds of pages hold math:
//  - Markdown pages: pymdownx.arithmatex (generic: true) wraps it in <span|div class="arithmatex"> \( \) / \[ \];
//  - notebook pages (mkdocs-jupyter / nbconvert): it stays as raw $...$ / $$...$$ in the rendered Markdown cells
//    (.jp-RenderedMarkdown), nested in paragraphs and list items, and in LaTeX outputs (.jp-RenderedLatex).
// Only those containers are typeset (startup.elements), so a $ or \( anywhere else on a page stays text; inside
// them MathJax skips code and pre as usual.
const ADALOOP_MATH = ".arithmatex, .jp-RenderedMarkdown, .jp-RenderedLatex";

window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true
  },
  startup: {
    elements: [ADALOOP_MATH]
  }
};

// mkdocs-material's instant navigation swaps pages without a reload: typeset the new page's math then. The first
// page is typeset by MathJax's own start-up (after which startup.promise resolves), so wait for that first:
// typesetting the same page twice at once would insert every equation twice.
if (typeof document$ !== "undefined") {
  let first = true;
  document$.subscribe(() => {
    if (first) {
      first = false;
      return;
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise = MathJax.startup.promise.then(() => {
        MathJax.startup.output.clearCache();
        MathJax.typesetClear();
        MathJax.texReset();
        return MathJax.typesetPromise(document.querySelectorAll(ADALOOP_MATH));
      });
    }
  });
}
