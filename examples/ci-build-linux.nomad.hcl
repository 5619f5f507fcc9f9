# The CI job in a Linux guest. Tart shares folders with Linux guests too, but they do
# not mount them by themselves: with a command the driver mounts them at /mnt/shared
# (sudo mount -t virtiofs, with ssh_password for sudo) before the command starts, and
# NOMAD_TASK_DIR, NOMAD_ALLOC_DIR and NOMAD_SECRETS_DIR point there.
job "ci-build-linux" {
  datacenters = ["dc1"]
  type        = "batch"

  group "build" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "test" {
      driver = "tart"

      template {
        destination = "local/test.sh"
        perms       = "755"
        data        = <<EOH
#!/bin/sh
set -eu
uname -a
echo "alloc $NOMAD_ALLOC_ID: tests passed" > "$NOMAD_ALLOC_DIR/data/result.txt"
EOH
      }

      config {
        url          = "ghcr.io/cirruslabs/ubuntu:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        command  = "/bin/sh"
        args     = ["local/test.sh"]
        timeout  = "20m"
      }

      resources {
        cores  = 2
        memory = 4096
      }
    }
  }
}
