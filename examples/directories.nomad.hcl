# Host directories shared into the VM. Inside a macOS guest, shares on the
# default tag appear under "/Volumes/My Shared Files/<name>"; a share with a
# custom tag is not automounted (mount it with mount_virtiofs <tag> <dir>).
job "tart-directories" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        directory {
          name = "assets"
          path = "/Users/me/project/assets"
          options {
            readonly = true
            tag      = "assets"
          }
        }

        directory {
          name = "cache"
          path = "/Users/me/cache"
        }

        # No name: the share is named after the last path component ("build").
        directory {
          path = "/Users/me/project/build"
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
