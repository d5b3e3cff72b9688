//! The export table: each import name bound to the host routine that implements it.
//!
//! The routines live in the component that owns them (as Wine's `ntoskrnl.exe.spec` lists one name
//! per line and leaves the implementations to their areas). Nothing else lives here.
//!
//! Each host routine is an `extern "win64"` function: the driver calls it the Win64 way.

use crate::{
    crt, ex, io, kd, ke, mm, ob,
    routine::{self, Routine},
    rtl,
};

/// The host function that implements `routine`.
fn host(routine: Routine) -> *const () {
    use Routine as R;
    match routine {
        R::MmLockPagableDataSection => mm::lock_pagable_data_section as *const (),
        R::MmLockPagableSectionByHandle => mm::lock_pagable_section_by_handle as *const (),
        R::MmUnlockPagableImageSection => mm::unlock_pagable_image_section as *const (),
        R::KeGetCurrentIrql => ke::get_current_irql as *const (),
        R::KfRaiseIrql => ke::kf_raise_irql as *const (),
        R::KeRaiseIrqlToDpcLevel => ke::raise_irql_to_dpc_level as *const (),
        R::KeLowerIrql | R::KfLowerIrql => ke::lower_irql as *const (),
        R::KeAcquireSpinLockRaiseToDpc => ke::spinlock::acquire_raise_to_dpc as *const (),
        R::KeReleaseSpinLock => ke::spinlock::release_lower as *const (),
        R::KeAcquireSpinLockAtDpcLevel => ke::spinlock::acquire_at_dpc_level as *const (),
        R::KeReleaseSpinLockFromDpcLevel => ke::spinlock::release_from_dpc_level as *const (),
        R::KeQueryPerformanceCounter => ke::query_performance_counter as *const (),
        R::KeBugCheckEx => ke::bug_check_ex as *const (),
        R::KeInitializeTimer => ke::timer::initialize as *const (),
        R::KeInitializeTimerEx => ke::timer::initialize_ex as *const (),
        R::KeSetTimer => ke::timer::set_once as *const (),
        R::KeSetTimerEx => ke::timer::set_ex as *const (),
        R::KeCancelTimer => ke::timer::cancel as *const (),
        R::KeReadStateTimer => ke::timer::read_state as *const (),
        R::KeInitializeDpc => ke::dpc::initialize as *const (),
        R::KeInsertQueueDpc => ke::dpc::insert_queue as *const (),
        R::KeRemoveQueueDpc => ke::dpc::remove_queue as *const (),
        R::KeFlushQueuedDpcs => ke::dpc::flush_queued as *const (),
        R::ExAllocatePool2 => ex::allocate_pool2 as *const (),
        R::ExAllocatePoolWithTag => ex::allocate_pool_with_tag as *const (),
        R::ExFreePool => ex::free_pool as *const (),
        R::ExFreePoolWithTag => ex::free_pool_with_tag as *const (),
        R::ExInitializeRundownProtection => ex::initialize_rundown_protection as *const (),
        R::ExAcquireRundownProtection => ex::acquire_rundown_protection as *const (),
        R::ExReleaseRundownProtection => ex::release_rundown_protection as *const (),
        R::ExWaitForRundownProtectionRelease => ex::wait_for_rundown_release as *const (),
        R::IoCreateDevice => io::device::create_device as *const (),
        R::IoDeleteDevice => io::device::delete_device as *const (),
        R::IoCreateSymbolicLink => io::device::create_symbolic_link as *const (),
        R::IoDeleteSymbolicLink => io::device::delete_symbolic_link as *const (),
        R::IofCompleteRequest => io::irp::iof_complete_request as *const (),
        R::IoCancelIrp => io::irp::cancel_irp as *const (),
        R::IoAcquireCancelSpinLock => io::irp::acquire_cancel_spin_lock as *const (),
        R::IoReleaseCancelSpinLock => io::irp::release_cancel_spin_lock as *const (),
        R::IoCsqInitialize => io::csq::initialize as *const (),
        R::IoCsqInitializeEx => io::csq::initialize_ex as *const (),
        R::IoCsqInsertIrp => io::csq::insert_irp as *const (),
        R::IoCsqInsertIrpEx => io::csq::insert_irp_ex as *const (),
        R::IoCsqRemoveIrp => io::csq::remove_irp as *const (),
        R::IoCsqRemoveNextIrp => io::csq::remove_next_irp as *const (),
        R::RtlInitUnicodeString => rtl::unicode::init_unicode_string as *const (),
        R::RtlCreateSecurityDescriptor => rtl::create_security_descriptor as *const (),
        R::RtlSetDaclSecurityDescriptor => rtl::set_dacl_security_descriptor as *const (),
        R::RtlCreateAcl => rtl::create_acl as *const (),
        R::RtlLengthSid => rtl::length_sid as *const (),
        R::RtlInitializeSid => rtl::initialize_sid as *const (),
        R::RtlSubAuthoritySid => rtl::sub_authority_sid as *const (),
        R::RtlAddAccessAllowedAce => rtl::add_access_allowed_ace as *const (),
        R::ObOpenObjectByPointer => ob::open_object_by_pointer as *const (),
        R::ZwSetSecurityObject => ob::zw_set_security_object as *const (),
        R::ZwClose => ob::zw_close as *const (),
        R::DbgPrint => kd::dbg_print as *const (),
        R::DbgPrintEx => kd::dbg_print_ex as *const (),
        R::memcpy => crt::memcpy as *const (),
        R::memmove => crt::memmove as *const (),
        R::memset => crt::memset as *const (),
        R::memcmp => crt::memcmp as *const (),
        R::strlen => crt::strlen as *const (),
        R::__chkstk => crt::pagelock_testbed_chkstk as *const (),
    }
}

/// The host address of the routine imported as `name` (the loader's resolver); the routine
/// remembers where it was bound.
#[must_use]
pub fn resolve(name: &str) -> Option<usize> {
    let routine = Routine::from_name(name)?;
    let address = host(routine) as usize;
    routine::bound(routine, address);
    Some(address)
}
