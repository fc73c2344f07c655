"""arcbake firstboot: the in-guest service that onboards a clone to Azure Arc and Flux.

Never imports builder, Jinja2, pyvmomi, click or rich: the image installs only the `firstboot` extra.
"""
