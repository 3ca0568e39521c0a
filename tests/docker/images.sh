# Images for the Docker backend tests, built where no registry can be pulled from. Sourced by engine.sh, which has
# started the engine (DOCKER_HOST) and set STATE; `build_images` sets POSTGRES_IMAGE, PHOENIX_IMAGE, OLLAMA_IMAGE,
# APP_IMAGE.
#
# Each image is built in two stages, each skipped when its inputs have not changed:
#   root   a Debian root made with debootstrap (minbase) and packages installed in a chroot of it (apt reaches
#          Debian and pip reaches PyPI from there), imported with `docker import` as local/llmtrace-NAME-root:KEY,
#          KEY being a hash of the recipe function's text, the versions it installs and the parent root's KEY;
#   final  the project's small files (an entrypoint, the Ollama stand-in and the package) copied onto it with
#          `docker cp` and `docker commit`, labelled with the hash of everything, so a warm run only compares labels.
# The debootstrap roots are kept under $STATE/rootfs by KEY and the images stay in the engine's data-root.

REPO=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
LABEL=org.pytest-llmtrace.inputs
ROOTS="$STATE/rootfs"
POSTGRES_IMAGE=local/llmtrace-postgres:15
# The Phoenix the plugin's default image pins (one place: services/docker.py).
PHOENIX_VERSION=$(sed -n 's|^PHOENIX_IMAGE = "arizephoenix/phoenix:version-\(.*\)"$|\1|p' \
    "$REPO/pytest_llmtrace/services/docker.py")
PHOENIX_IMAGE=local/llmtrace-phoenix:$PHOENIX_VERSION
OLLAMA_IMAGE=local/llmtrace-ollama:standin
# The reference gateway as the service a release deploys (fixtures/service), for llmtrace_app_image.
APP_IMAGE=local/llmtrace-gateway:test

key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

debian_mirror() {
    local uri
    uri=$(awk -v suite="$SUITE" '/^$/ {u = ""} /^URIs:/ {u = $2}
        /^Suites:/ && u != "" { for (i = 2; i <= NF; i++) if ($i == suite) { print u; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit } }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            2>/dev/null || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# What the host's apt would install: part of the keys, so a Debian update rebuilds (empty where apt has no lists).
debian_versions() { apt-cache policy "$@" 2>/dev/null | awk '/^[^ ]/ {p = $1} /Candidate:/ {print p, $2}' || true; }

pyproject() { "${PYTHON:-python3}" -c 'import sys, tomllib; exec(sys.argv[1])' "$1"; }

# -- chroot plumbing --------------------------------------------------------------------------------------------------

in_root() {
    chroot "$1" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180 /bin/sh -ec "$2"
}

open_root() {
    # The host's CA bundle, so pip trusts what the host trusts; no service may start inside the chroot.
    cp /etc/resolv.conf "$1/etc/resolv.conf"
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$1/tmp/host-ca.crt"
    printf '#!/bin/sh\nexit 101\n' >"$1/usr/sbin/policy-rc.d"
    chmod +x "$1/usr/sbin/policy-rc.d"
}

close_root() {
    rm -f "$1/tmp/host-ca.crt" "$1/usr/sbin/policy-rc.d"
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb "$1/root/.cache"
}

# -- roots (cached directories, made only when an image has to be built from them) -------------------------------

base_key() { BASE_KEY=$(key_of "$(declare -f ensure_base_root)" "$SUITE" "$MIRROR"); }

ensure_base_root() {
    PARENT_ROOT="$ROOTS/base-$BASE_KEY"
    [ -e "$PARENT_ROOT/.llmtrace-complete" ] && return 0
    rm -rf "$ROOTS"/base-*
    mkdir -p "$ROOTS"
    log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    if ! debootstrap --variant=minbase "$SUITE" "$PARENT_ROOT.tmp" "$MIRROR" >"$STATE/debootstrap.log" 2>&1; then
        tail -n 20 "$STATE/debootstrap.log" >&2
        return 1
    fi
    touch "$PARENT_ROOT.tmp/.llmtrace-complete"
    mv "$PARENT_ROOT.tmp" "$PARENT_ROOT"
}

python_key() {
    PYTHON_KEY=$(key_of "$BASE_KEY" "$(declare -f ensure_python_root)" "$(debian_versions python3.11 libgomp1)")
}

ensure_python_root() {
    local root="$ROOTS/python-$PYTHON_KEY"
    PARENT_ROOT=$root
    [ -e "$root/.llmtrace-complete" ] && return 0
    ensure_base_root
    rm -rf "$ROOTS"/python-*
    log "python root: python3, venv, libgomp1 (llama.cpp's OpenMP)"
    cp -a "$PARENT_ROOT" "$root.tmp"
    open_root "$root.tmp"
    if ! in_root "$root.tmp" 'apt-get update -qq
        apt-get install -y -q --no-install-recommends python3 python3-venv libgomp1' >"$STATE/build-python.log" 2>&1
    then
        tail -n 30 "$STATE/build-python.log" >&2
        return 1
    fi
    close_root "$root.tmp"
    mv "$root.tmp" "$root"
    PARENT_ROOT=$root
}

# -- the images -------------------------------------------------------------------------------------------------------

image_label() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

# root_image NAME ENSURE_PARENT KEY SCRIPT: the parent root plus SCRIPT run in a chroot, imported as NAME-root:KEY.
root_image() {
    local name=$1 ensure_parent=$2 key=$3 script=$4 work
    ROOT_IMAGE="local/llmtrace-$name-root:$key"
    docker image inspect "$ROOT_IMAGE" >/dev/null 2>&1 && return 0
    "$ensure_parent"
    work="$STATE/work/$name"
    rm -rf "$work"
    mkdir -p "$STATE/work"
    cp -a "$PARENT_ROOT" "$work"
    open_root "$work"
    log "running in a chroot of $work: $(echo "$script" | tr -s ' \n' ' ')"
    if ! in_root "$work" "$script" >"$STATE/build-$name.log" 2>&1; then
        tail -n 30 "$STATE/build-$name.log" >&2
        return 1
    fi
    close_root "$work"
    rm -f "$work/.llmtrace-complete"
    log "importing $ROOT_IMAGE ($(du -sh "$work" | cut -f1))"
    tar -C "$work" -c . | docker import - "$ROOT_IMAGE" >/dev/null
    rm -rf "$work"
    docker images --format '{{.Repository}}:{{.Tag}}' "local/llmtrace-$name-root" | grep -vx "$ROOT_IMAGE" |
        xargs -r docker rmi >/dev/null || true
}

# final_image IMAGE KEY [--copy HOST_PATH CONTAINER_DIR]... -- CHANGE...: ROOT_IMAGE plus files, committed as IMAGE.
final_image() {
    local image=$1 key=$2 container
    shift 2
    container=$(docker create --entrypoint /bin/true "$ROOT_IMAGE")
    while [ "$1" = --copy ]; do
        # tar, not `docker cp DIR`: __pycache__ stays out, and the files are root's
        tar -C "$(dirname "$2")" --exclude=__pycache__ --owner=0 --group=0 -c "$(basename "$2")" |
            docker cp - "$container:$3"
        shift 3
    done
    shift
    local changes=(--change "LABEL $LABEL=$key")
    local change
    for change in "$@"; do changes+=(--change "$change"); done
    docker commit "${changes[@]}" "$container" "$image" >/dev/null
    docker rm "$container" >/dev/null
}

tree_key() { (cd "$REPO" && find "$@" -name __pycache__ -prune -o -type f -print0 | sort -z | xargs -0 sha256sum); }

postgres_image() {
    local key script
    script='apt-get update -qq
        apt-get install -y -q --no-install-recommends postgresql-15 >/dev/null
        pg_dropcluster 15 main'
    key=$(key_of "$BASE_KEY" "$script" "$(debian_versions postgresql-15)")
    local final
    final=$(key_of "$key" "$(tree_key tests/docker/postgres-entrypoint.sh)" "$(declare -f postgres_image)")
    if [ "$(image_label "$POSTGRES_IMAGE")" = "$final" ]; then
        log "$POSTGRES_IMAGE is up to date"
        return 0
    fi
    log "building $POSTGRES_IMAGE: Debian's postgresql-15 with an official-style entrypoint"
    root_image postgres ensure_base_root "$key" "$script"
    final_image "$POSTGRES_IMAGE" "$final" --copy "$REPO/tests/docker/postgres-entrypoint.sh" /usr/local/bin -- \
        'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV PGDATA=/var/lib/postgresql/data' 'ENV LANG=C.UTF-8' 'EXPOSE 5432' \
        'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' 'CMD ["postgres"]'
}

phoenix_image() {
    local key script
    script="python3 -m venv /opt/phoenix
        /opt/phoenix/bin/pip install -q arize-phoenix==$PHOENIX_VERSION
        mkdir -p /phoenix"
    key=$(key_of "$PYTHON_KEY" "$script")
    local final
    final=$(key_of "$key" "$(declare -f phoenix_image)")
    if [ "$(image_label "$PHOENIX_IMAGE")" = "$final" ]; then
        log "$PHOENIX_IMAGE is up to date"
        return 0
    fi
    log "building $PHOENIX_IMAGE: arize-phoenix==$PHOENIX_VERSION from PyPI (a few minutes)"
    root_image phoenix ensure_python_root "$key" "$script"
    # Like the official image: all interfaces inside the container (the plugin publishes the port on 127.0.0.1).
    final_image "$PHOENIX_IMAGE" "$final" -- 'ENV PHOENIX_HOST=0.0.0.0' 'ENV PHOENIX_PORT=6006' \
        'ENV PHOENIX_GRPC_PORT=4317' 'ENV PHOENIX_WORKING_DIR=/phoenix' 'ENV PHOENIX_TELEMETRY_ENABLED=false' \
        'EXPOSE 6006' 'EXPOSE 4317' 'ENTRYPOINT ["/opt/phoenix/bin/python", "-m", "phoenix.server.main", "serve"]'
}

ollama_image() {
    local xllamacpp deps key script
    xllamacpp=$(pyproject 'print(next(d for d in tomllib.load(open("'"$REPO"'/pyproject.toml", "rb"))["project"]
        ["optional-dependencies"]["dev"] if d.startswith("xllamacpp")))')
    deps=$(pyproject 'print(" ".join(repr(d) for d in tomllib.load(open("'"$REPO"'/pyproject.toml", "rb"))
        ["project"]["dependencies"]))')
    script="python3 -m venv /opt/venv
        /opt/venv/bin/pip install -q '$xllamacpp' $deps
        mkdir -p /opt/llmtrace"
    key=$(key_of "$PYTHON_KEY" "$script")
    local final
    final=$(key_of "$key" "$(declare -f ollama_image)" "$(tree_key pytest_llmtrace tests/docker/ollama_standin.py)")
    if [ "$(image_label "$OLLAMA_IMAGE")" = "$final" ]; then
        log "$OLLAMA_IMAGE is up to date"
        return 0
    fi
    log "building $OLLAMA_IMAGE: the project's Ollama-API front over llama.cpp ($xllamacpp)"
    root_image ollama ensure_python_root "$key" "$script"
    local in_image_dir=/opt/llmtrace
    final_image "$OLLAMA_IMAGE" "$final" --copy "$REPO/pytest_llmtrace" "$in_image_dir" \
        --copy "$REPO/tests/docker/ollama_standin.py" "$in_image_dir" -- \
        "ENV PYTHONPATH=$in_image_dir" 'ENV OLLAMA_HOST=0.0.0.0:11434' 'ENV OLLAMA_MODELS=/root/.ollama/models' \
        'EXPOSE 11434' "ENTRYPOINT [\"/opt/venv/bin/python\", \"$in_image_dir/ollama_standin.py\"]"
}

app_image() {
    local key script
    # What fixtures/service/server.py and fixtures/gateway import, at the versions the dev environment has.
    script="python3 -m venv /opt/app
        /opt/app/bin/pip install -q fastapi==0.165.0 uvicorn==0.55.0 ollama==0.6.3 psycopg2-binary==2.9.13 \\
            openinference-semantic-conventions==0.1.42 opentelemetry-sdk==1.45.1 \\
            opentelemetry-exporter-otlp-proto-http==1.45.1
        mkdir -p /app"
    key=$(key_of "$PYTHON_KEY" "$script")
    local final
    final=$(key_of "$key" "$(declare -f app_image)" "$(tree_key fixtures/gateway fixtures/service)")
    if [ "$(image_label "$APP_IMAGE")" = "$final" ]; then
        log "$APP_IMAGE is up to date"
        return 0
    fi
    log "building $APP_IMAGE: fixtures/service on FastAPI/uvicorn"
    root_image gateway ensure_python_root "$key" "$script"
    # Binds loopback, on the port the plugin gives in PORT (the container runs on the host's network).
    final_image "$APP_IMAGE" "$final" --copy "$REPO/fixtures/gateway" /app --copy "$REPO/fixtures/service/server.py" /app \
        -- 'ENV PORT=8000' \
        'ENTRYPOINT ["/bin/sh", "-c", "exec /opt/app/bin/python -m uvicorn --app-dir /app server:app --host 127.0.0.1 --port \"$PORT\""]'
}

build_images() {
    local started=$SECONDS
    MIRROR=$(debian_mirror)
    base_key
    python_key
    postgres_image
    phoenix_image
    ollama_image
    app_image
    docker image prune -f >/dev/null
    log "images ready in $((SECONDS - started)) s: $POSTGRES_IMAGE, $PHOENIX_IMAGE, $OLLAMA_IMAGE, $APP_IMAGE"
}
