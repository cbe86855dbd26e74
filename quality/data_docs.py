"""Great Expectations Data Docs that open in a secure setting. GX's pages load Bootstrap,
jQuery, Font Awesome and Vega from public CDNs and its logo from S3, so with no network
they render unstyled and the browser tries to reach the internet. After each build every
page is rewritten to use local files only: Vega from the copies Splink ships, GX's own
logo, a small stylesheet of ours in place of Bootstrap and a few lines of script that draw
the index's tables in place of jQuery's bootstrap-table (without its sorting and filters)."""

import os
import re
import shutil
from importlib import resources
from pathlib import Path

VENDOR_DIR = "static/vendor"
STYLESHEET = "static/styles/offline.css"
TABLES_SCRIPT = "static/vendor/tables.js"
# Splink bundles these exact builds for its own offline dashboards.
VEGA_BUILDS = {
    "vega@5": "vega@5.31.0",
    "vega-lite@5": "vega-lite@5.2.0",
    "vega-embed@6": "vega-embed@6.20.2",
}

_REMOTE_SCRIPT = re.compile(
    r'<script\b[^>]*\bsrc="(https?://[^"]*)"[^>]*>\s*</script>\s*', re.IGNORECASE
)
_REMOTE_LINK = re.compile(r'<link\b[^>]*\bhref="https?://[^"]*"[^>]*>\s*', re.IGNORECASE)
_GX_LOGO = re.compile(r"https://great-expectations-web-assets\.[^\"')]*?\.png(\?[^\"')]*)?")
_NEWSLETTER = re.compile(r"<footer>\s*<p>Stay current[^<]*<a [^>]*>[^<]*</a></p>\s*</footer>")
# What a browser would fetch by itself (links a reader may follow are left alone).
_REMOTE_LOAD = re.compile(
    r"""\bsrc=["']https?://|<link\b[^>]*\bhref=["']https?://|url\(['"]?https?://""", re.IGNORECASE
)


def _vega_file(url: str) -> str | None:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return f"{VEGA_BUILDS[name]}.js" if name in VEGA_BUILDS else None


def _install_assets(site: Path) -> None:
    vendor = site / VENDOR_DIR
    vendor.mkdir(parents=True, exist_ok=True)
    bundled = resources.files("splink") / "internals" / "files" / "external_js"
    for build in VEGA_BUILDS.values():
        target = vendor / f"{build}.js"
        if not target.exists():
            target.write_bytes((bundled / build).read_bytes())
    templates = Path(__file__).parent / "templates"
    (site / STYLESHEET).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(templates / "data_docs_offline.css", site / STYLESHEET)
    shutil.copyfile(templates / "data_docs_tables.js", site / TABLES_SCRIPT)


def offline_page(html: str, to_root: str) -> str:
    """One page rewritten to local assets; `to_root` is the relative path to the site root."""

    def script(match: re.Match[str]) -> str:
        local = _vega_file(match.group(1))
        return f'<script src="{to_root}/{VENDOR_DIR}/{local}"></script>\n' if local else ""

    html = _REMOTE_SCRIPT.sub(script, html)
    html = _REMOTE_LINK.sub("", html)
    html = _GX_LOGO.sub(f"{to_root}/static/images/logo-long.png", html)
    html = _NEWSLETTER.sub("", html)
    local = (
        f'<link rel="stylesheet" href="{to_root}/{STYLESHEET}">\n'
        f'<script src="{to_root}/{TABLES_SCRIPT}"></script>\n'
    )
    if local not in html:
        html = html.replace("</head>", f"{local}</head>", 1)
    return html


def make_offline(site: Path) -> list[Path]:
    """Rewrite every page of the Data Docs site under `site`; returns the pages that would
    still fetch something remote (there should be none)."""
    if not site.is_dir():
        return []
    _install_assets(site)
    remaining = []
    for page in sorted(site.rglob("*.html")):
        to_root = Path(os.path.relpath(site, page.parent)).as_posix()
        original = page.read_text(encoding="utf-8")
        html = offline_page(original, to_root)
        if html != original:  # GX rebuilds the site each validation; most pages are done
            page.write_text(html, encoding="utf-8")
        if _REMOTE_LOAD.search(html):
            remaining.append(page)
    return remaining
