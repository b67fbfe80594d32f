# One image for the node agent and the collector: `unlinkwatch agent ...` / `unlinkwatch collector ...`.
# Kept to RUN (shell form), COPY of the build context, ENV and WORKDIR so that
# scripts/replay-dockerfile.sh can replay it step by step in a debootstrap root where no engine runs.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

# bcc comes from Debian (python3-bpfcc), never from PyPI: the PyPI package named "bcc" is unrelated.
# linux-headers-amd64 is a generic header tree for compilation only; struct offsets come from the node's BTF.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc bpftool linux-headers-amd64 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

# Debian splits the headers into -common and -amd64; bcc needs them merged into one tree.
RUN scripts/make-header-tree.sh /usr/local/share/unlinkwatch/kernel-headers

# System site packages so the venv sees Debian's bcc; the postgres extra lets the collector use PostgreSQL.
RUN python3 -m venv --system-site-packages /opt/unlinkwatch \
 && /opt/unlinkwatch/bin/pip install --no-cache-dir --disable-pip-version-check '.[postgres]' \
 && /opt/unlinkwatch/bin/unlinkwatch --version \
 && /opt/unlinkwatch/bin/python -c 'import bcc' \
 && rm -rf /src

ENV PATH=/opt/unlinkwatch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    UNLINKWATCH_KERNEL_HEADERS=/usr/local/share/unlinkwatch/kernel-headers \
    BCC_KERNEL_SOURCE=/usr/local/share/unlinkwatch/kernel-headers \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /
# No USER: the agent needs uid 0 plus named capabilities; the collector's manifest sets a non-root uid.
ENTRYPOINT ["unlinkwatch"]
CMD ["--help"]
