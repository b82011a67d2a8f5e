// tc_debounce: push-button debouncer.
// The raw button input is synchronised, then the debounced output only
// changes after the synchronised input has held a new value for STABLE_CYCLES
// consecutive clock cycles. rise pulses for one cycle when the debounced
// output goes from 0 to 1.
module tc_debounce #(
    parameter STABLE_CYCLES = 1000
) (
    input      clk,
    input      rst,
    input      btn,
    output reg state,
    output     rise
);
    reg        sync0, sync1;
    reg        state_d;
    reg [19:0] stable_cnt;

    always @(posedge clk) begin
        sync0 <= btn;
        sync1 <= sync0;
    end

    always @(posedge clk) begin
        if (rst) begin
            state      <= 1'b0;
            state_d    <= 1'b0;
            stable_cnt <= 0;
        end else begin
            state_d <= state;
            if (sync1 == state)
                stable_cnt <= 0;
            else if (stable_cnt == STABLE_CYCLES - 1) begin
                state      <= sync1;
                stable_cnt <= 0;
            end else
                stable_cnt <= stable_cnt + 1'b1;
        end
    end

    assign rise = state & ~state_d;
endmodule
