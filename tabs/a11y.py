"""Accessibility and phone layout, in one place: the page's CSS and a small head script.

app.launch_kwargs passes CSS and HEAD to launch(); tests/test_accessibility.py runs axe-core
in headless Chromium over every tab (English and zh-CN) and checks a 390x844 phone view
(README "Accessibility"). Each rule below names the axe finding or layout defect it fixes.

Fixes are in our code where a prop can do it; what remains sits in Gradio 6.31's own frontend
markup, which no component prop reaches, and is fixed here with theme CSS variables or by
the head script (ARIA attributes only; nothing the app's logic reads)."""

from __future__ import annotations

# Colours: Gradio's default theme (orange primary hue, neutral greys) fails WCAG 2.1 AA
# contrast (axe "color-contrast", 4.5:1 for normal text) in several places:
#   --body-text-color-subdued  #bbbbc2 on white = 1.9:1 (upload "- or -", slider min/max,
#                              footer links) and --block-info-text-color (every `info=` line)
#   primary buttons            white on orange-500 #f97316 = 2.8:1 (Classify, Ask, Search...)
#   selected tab / accent      orange-500 text on white = 2.8:1
#   stop buttons               white on red-500 #ef4444 = 3.8:1
# Darker shades of the same hues meet 4.5:1: neutral-600 #52525b (7.7:1 on white, 7.3:1 on
# neutral-50), orange-700 #c2410c (5.2:1 against white), red-700 #b91c1c (6.5:1). Dark mode
# (?__theme=dark or the system setting) keeps Gradio's neutral-400 greys (5.8:1 on the
# panel grey #27272a), set again below because the light values above sit on
# .gradio-container itself; its primary fill (orange-600, 3.6:1) gets the same darker shade,
# and the disclaimer's light amber box (app.py), which left dark mode's light text at 1.05:1,
# turns amber-950 (#451a03, 13.6:1).
# gr.JSON's light-mode syntax colours (salmon keys/strings #d18770/#ce9178 at 2.6:1, teal
# numbers/brackets at 3-4:1) get darker shades of the same hues, 5.2:1 or more on white and on
# the panel grey; its dark mode (.dark-mode) keeps Gradio's colours, which pass on dark grey.
# The disclaimer (app.py's blockquote) keeps its amber border; in light mode its text is the
# body colour on amber-50 (#fffbeb), 15:1.
_COLOURS = """
:root, .gradio-container {
  --body-text-color-subdued: var(--neutral-600);
  --block-info-text-color: var(--neutral-600);
  --input-placeholder-color: var(--neutral-500);  /* 4.8:1: WCAG does not exempt placeholders */
  --color-accent: var(--primary-700);
  --button-primary-background-fill: var(--primary-700);
  --button-primary-background-fill-hover: var(--primary-800);
  --button-primary-border-color: var(--primary-700);
  --button-primary-border-color-hover: var(--primary-800);
  --button-cancel-background-fill: #b91c1c;
  --button-cancel-background-fill-hover: #991b1b;
  --button-cancel-border-color: #b91c1c;
  --button-cancel-border-color-hover: #991b1b;
}
.json-node:not(.dark-mode) {
  --text-color: #9a3412;
  --key-color: #9a3412;
  --string-color: #a8442a;
  --number-color: #2f6f80;
  --bracket-color: #3f6b6b;
  --square-bracket-color: #a3343f;
  --punctuation-color: #3f6b6b;
  --line-number-color: #57606a;
}
.dark, .dark .gradio-container {
  --body-text-color-subdued: var(--neutral-400);
  --block-info-text-color: var(--neutral-400);
  --button-primary-background-fill: var(--primary-700);
  --button-primary-background-fill-hover: var(--primary-800);
  --button-cancel-background-fill: #b91c1c;
  --button-cancel-background-fill-hover: #991b1b;
  --color-accent: var(--primary-400);
}
.dark .medlab-disclaimer blockquote { background: #451a03; }
"""

# Phones (390 px wide): nothing may push the page wider than the screen. Wide content
# (Markdown tables, code) scrolls inside its own box instead. These rules go in HEAD as a
# <style>, not through launch(css=): Gradio prefixes the rules of css= inside @media blocks
# with ".gradio-container .contain", which the page frame (.main.app, outside .contain) is not in.
PHONE_CSS = """
.prose table, .prose pre { display: block; max-width: 100%; overflow-x: auto; }
/* Gradio's Markdown sets tables to word-break: break-word, which on a phone splits words in
   narrow cells ("Radiog / raph / caption / ing"), as does its overflow-wrap: anywhere: whole
   words, and the table scrolls instead. */
.prose span.md table { word-break: normal; overflow-wrap: break-word; }
/* a long path or URL in text breaks instead of widening its box */
.prose { overflow-wrap: break-word; }
@media (max-width: 640px) {
  /* Gradio's page frame (.main.app) keeps 32 px each side: a sixth of a phone's width. */
  .gradio-container .main.app { padding-left: 12px; padding-right: 12px; }
  /* Form controls sharing a row (DICOM window + scenario, k + model, beams + length) get
     160 px each from Gradio, which squeezes their help text into narrow columns: one per line. */
  .form > .block { min-width: min(240px, 100%) !important; }
  /* The quiz tally's nine columns in 360 px stacked its headers letter by letter: the table
     keeps a readable width and scrolls sideways inside its own box. */
  #quiz-tally table { min-width: 720px; }
  /* The title shared its row with the link button and wrapped word by word: the button goes
     under the title instead. */
  #medlab-header { flex-wrap: wrap; }
  #medlab-header > * { min-width: 100% !important; }
}
"""

CSS = _COLOURS

# Head script: ARIA fixes for Gradio 6.31's frontend markup (re-applied as the page renders;
# one MutationObserver, attribute changes only).
#  - "aria-prohibited-attr": an empty output (gr.Label, gr.Image, gr.JSON, gr.Gallery before a
#    result) shows <div class="empty" aria-label="Empty value"> with an icon inside and no role,
#    and aria-label is not allowed on a role-less div. role="img" makes it what it is: a
#    labelled placeholder picture, so the label is read.
#  - "button-name": gr.Examples of images renders each example as <button class="gallery-item">
#    holding only a thumbnail (an <img> with no alt), so the button has no name. It gets the
#    example file's name (the assets' names say what they show) as aria-label, and the
#    thumbnail alt="" (decorative: the button carries the name).
#  - "button-name": a gr.Image output with a picture (Grad-CAM overlay, teach plots) wraps it in
#    <div class="image-container"><button> whose <img> has alt="" when no alt_text is given, so
#    the button has no name. It gets the component's label as shown (already in the page's
#    language), e.g. "Grad-CAM overlay (same size as the input)".
HEAD = "<style>" + PHONE_CSS + "</style>" + """
<script>
(() => {
  const fileName = (src) => {
    try { return decodeURIComponent(new URL(src, location.href).pathname.split('/').pop() || ''); }
    catch (e) { return ''; }
  };
  const example = (document.documentElement.lang || navigator.language || '').toLowerCase().startsWith('zh') ? '示例' : 'Example';
  const fix = () => {
    for (const el of document.querySelectorAll('div.empty[aria-label]:not([role])')) el.setAttribute('role', 'img');
    for (const b of document.querySelectorAll('button.gallery-item:not([aria-label])')) {
      if (b.textContent.trim()) continue;
      const img = b.querySelector('img, video');
      const name = img ? fileName(img.getAttribute('src') || '') : '';
      b.setAttribute('aria-label', name ? example + ': ' + name : example);
      if (img && img.tagName === 'IMG' && !img.hasAttribute('alt')) img.setAttribute('alt', '');
    }
    for (const b of document.querySelectorAll('.image-container > button:not([aria-label])')) {
      if (b.textContent.trim() || (b.querySelector('img[alt]:not([alt=""])'))) continue;
      const label = b.closest('.block')?.querySelector('[data-testid=block-label]')?.textContent.trim();
      if (label) b.setAttribute('aria-label', label);
    }
  };
  let queued = false;
  const schedule = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; fix(); }); } };
  const start = () => { fix(); new MutationObserver(schedule).observe(document.body, {childList: true, subtree: true}); };
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();
</script>
"""
