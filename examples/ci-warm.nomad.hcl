# A CI job that resumes a suspended clone of the agent's warm pool instead of booting a
# VM (see the README's "Warm start"). The agent's plugin block declares the pool:
#
#   plugin "nomad-driver-tart" {
#     config {
#       warm_pool {
#         name   = "sequoia"
#         image  = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
#         cores  = 4
#         memory = 8192
#       }
#     }
#   }
#
# The job matches the pool exactly (image, cores, memory, shared networking, a command);
# any difference, or any doubt at resume, boots a fresh VM instead, with a task event.
job "ci-warm" {
  datacenters = ["dc1"]
  type        = "batch"

  group "build" {
    # Prefer a Mac with a ready golden; any Mac with the driver can still run the job.
    affinity {
      attribute = "${attr.driver.tart.warm.sequoia.ready}"
      operator  = ">="
      value     = "1"
      weight    = 50
    }

    task "build" {
      driver = "tart"

      template {
        destination = "local/build.sh"
        data        = <<EOH
#!/bin/sh
echo "building in $(pwd) on $(sw_vers -productVersion 2>/dev/null || uname -sr)"
echo "guest up since: $(sysctl -n kern.boottime 2>/dev/null)"
echo ok > "$NOMAD_ALLOC_DIR/data/result.txt"
EOH
      }

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"
        command      = "/bin/sh"
        args         = ["local/build.sh"]
        warm_start   = true
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
