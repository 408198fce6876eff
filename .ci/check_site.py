"""Checks a built MkDocs site for what `mkdocs build --strict` lets through.

    python .ci/check_site.py SITE_DIR

Fails (exit 1, one line per fault) on any page of SITE_DIR whose rendered text, outside code, holds
a stray `::` (a reStructuredText literal marker), a `**` (bold left unbalanced) or a wrapped line
starting with `* ` (a bullet run into the prose), whose bold or italics open or close inside a word
(`2**N ... 2**7` read as bold), whose blockquote starts with `=` (a wrapped `>=`), or that links to
a folder without a page (index.html) or to nothing.
"""

import html.parser
import os
import re
import sys
import urllib.parse

CODE = {"code", "pre", "kbd", "samp", "script", "style"}
EMPHASIS = {"strong", "b", "em", "i"}


class _Tokens(html.parser.HTMLParser):
    """A page as a list of ("text", str, in_code), ("start", tag, attrs) and ("end", tag) tokens."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tokens, self._code = [], 0

    def handle_starttag(self, tag, attrs):
        self.tokens.append(("start", tag, dict(attrs)))
        self._code += tag in CODE

    def handle_endtag(self, tag):
        self.tokens.append(("end", tag, None))
        if tag in CODE and self._code:
            self._code -= 1

    def handle_data(self, data):
        self.tokens.append(("text", data, self._code > 0))


def _snippet(text, start, end):
    return " ".join(text[max(0, start - 40):end + 40].split())


def page_faults(page_html):
    """The faults of one page's rendered text (not its links): a list of strings."""
    parser = _Tokens()
    parser.feed(page_html)
    tokens, faults = parser.tokens, []
    for i, (kind, value, extra) in enumerate(tokens):
        if kind == "text" and not extra:
            for marker, fault in (("::", "stray '::'"), ("**", "unbalanced bold ('**' in the text)")):
                for match in re.finditer(re.escape(marker), value):
                    faults.append(f"{fault}: ...{_snippet(value, match.start(), match.end())}...")
            for match in re.finditer(r"\n[ \t]*\* \S", value):
                faults.append(f"bullet run into the prose: ...{_snippet(value, match.start(), match.end())}...")
        elif kind == "start" and value in EMPHASIS:
            before = tokens[i - 1] if i else None
            if before and before[0] == "text" and before[1][-1:].isalnum():
                faults.append(f"<{value}> opens inside a word: ...{' '.join(before[1][-40:].split())}<{value}>")
        elif kind == "end" and value in EMPHASIS:
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            if after and after[0] == "text" and after[1][:1].isalnum():
                faults.append(f"</{value}> closes inside a word: </{value}>{' '.join(after[1][:40].split())}...")
        elif kind == "start" and value == "blockquote":
            text = "".join(t[1] for t in tokens[i + 1:i + 8] if t[0] == "text").lstrip()
            if text.startswith("="):
                faults.append(f"blockquote starting with '=' (a wrapped '>='): > {text[:60].strip()}")
    return faults


def _links(page_html):
    parser = _Tokens()
    parser.feed(page_html)
    return [attrs["href"] for kind, tag, attrs in parser.tokens if kind == "start" and tag == "a" and attrs.get("href")]


def link_faults(site_dir, page_path, page_html):
    """Relative links of the page at page_path (under site_dir) to a folder without index.html or to nothing."""
    faults = []
    for href in _links(page_html):
        url = urllib.parse.urlsplit(href)
        if url.scheme or url.netloc or not url.path:
            continue
        path = urllib.parse.unquote(url.path)
        base = site_dir if path.startswith("/") else os.path.dirname(page_path)  # 404.html links from the root
        target = os.path.normpath(os.path.join(base, path.lstrip("/")))
        if os.path.commonpath([os.path.realpath(target), os.path.realpath(site_dir)]) != os.path.realpath(site_dir):
            faults.append(f"link outside the site: {href}")
        elif os.path.isdir(target) and not os.path.isfile(os.path.join(target, "index.html")):
            faults.append(f"link to a folder: {href}")
        elif not os.path.exists(target):
            faults.append(f"link to nothing: {href}")
    return faults


def check_site(site_dir):
    """(number of pages, faults as "page: fault" strings) of the site built in site_dir."""
    pages, faults = 0, []
    for root, _, files in os.walk(site_dir):
        for name in sorted(files):
            if not name.endswith(".html"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                page_html = f.read()
            pages += 1
            relative = os.path.relpath(path, site_dir)
            faults += [f"{relative}: {fault}" for fault in page_faults(page_html)]
            faults += [f"{relative}: {fault}" for fault in link_faults(site_dir, path, page_html)]
    return pages, faults


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        sys.exit(f"usage: {argv[0]} SITE_DIR (a built site)")
    pages, faults = check_site(argv[1])
    if not pages:
        sys.exit(f"{argv[1]}: no HTML page")
    for fault in faults:
        print(fault)
    print(f"{pages} pages checked: {len(faults)} fault(s)")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
