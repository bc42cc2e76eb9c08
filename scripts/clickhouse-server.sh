# Sourced by the ClickHouse benchmarks: start_clickhouse DIR HTTP TCP INTER REMOTE_XML
# starts Debian's clickhouse-server (${server_bin}) with its data and logs in DIR,
# listening on loopback only, in UTC, with REMOTE_XML (a <remote_servers> section, or
# empty) in its configuration; appends its pid to the array `pids` and returns once it
# answers /ping (or exits 1 with its error log).
start_clickhouse() {
    local dir="$1"
    mkdir -p "$dir/log"
    cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$2</http_port>
    <tcp_port>$3</tcp_port>
    <interserver_http_port>$4</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    $5
</yandex>
XML
    cat > "$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
    "$server_bin" --config-file="$dir/config.xml" > "$dir/log/stdout.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 200); do
        curl -fs "http://127.0.0.1:$2/ping" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    cat "$dir/log/server.err.log" >&2
    exit 1
}

