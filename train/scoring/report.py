"""`dfdc score --report out.html`: one page per video with its per-frame score plot and the face
crops that scored highest. Images are embedded, so the file can be mailed or opened offline."""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from train.evaluation import plots


def _img(data: bytes, mime: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def write(path: Path, results: list[tuple[dict, list[dict]]], model_uri: str) -> None:
    pages = []
    index = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (line, crops) in enumerate(results):
            name = html.escape(line["video"])
            anchor = f"v{n}"
            if line.get("error"):
                verdict = f'<p class="error">not scored: {html.escape(line["error"])}</p>'
                index.append(f'<li><a href="#{anchor}">{name}</a>: error</li>')
            else:
                verdict = f'<p class="score">P(fake) = {line["p_fake"]:.4f} from {line["faces_found"]} face crops</p>'
                if line.get("note"):
                    verdict += f"<p>{html.escape(line['note'])}</p>"
                index.append(f'<li><a href="#{anchor}">{name}</a>: {line["p_fake"]:.4f}</li>')
            body = [f'<section id="{anchor}"><h2>{name}</h2>', verdict]
            if line.get("frames"):
                png = plots.frame_scores(str(Path(tmp, f"{n}.png")), line["frames"], "per-frame P(fake)")
                body.append(_img(Path(png).read_bytes(), "image/png", "per-frame scores"))
            if crops:
                body.append("<h3>highest-scoring face crops</h3><div class='crops'>")
                body += [f"<figure>{_img(c['jpg'], 'image/jpeg', 'face crop', 160)}<figcaption>t={c['t']:.2f}s face {c['face']}: "
                         f"{c['p']:.3f}</figcaption></figure>" for c in crops]
                body.append("</div>")
            body.append("</section>")
            pages.append("\n".join(body))
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dfdc-scale scores</title><style>
body {{ font-family: sans-serif; margin: 2em; }} section {{ page-break-before: always; border-top: 1px solid #ccc; padding-top: 1em; }}
.score {{ font-size: 1.3em; }} .error {{ color: #b00; }} .crops {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ font-size: 0.85em; }}
</style></head><body>
<h1>dfdc-scale scores</h1><p>model: {html.escape(model_uri)}</p><ul>{''.join(index)}</ul>
{''.join(pages)}
</body></html>
""")
